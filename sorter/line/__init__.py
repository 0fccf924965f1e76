"""The line stage: the controller's link to the PLC and its audit trail.

Import what you need from the submodules (:mod:`sorter.line.plc` for the PLC
link, :mod:`sorter.line.plc.sim` for the simulated PLC, :mod:`sorter.line.audit`
for the audit log); this module stays empty so that importing
:mod:`sorter.line` costs nothing.
"""
