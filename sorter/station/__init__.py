"""The operator station: a web application beside the line.

A separate process from the line controller (the deadline path never waits on a
web request).  It reads the controller's audit log (read-only) and the line's
``sorter-log/1`` directory, and keeps its own SQLite store of users and verdicts.

- :mod:`sorter.station.store`: the station's own database (users, verdicts, the
  review queue, the index of the line's log, promotions);
- :mod:`sorter.station.auth`: password hashing, login rate limiting, CSRF tokens;
- :mod:`sorter.station.linedata`: the audit log and the line's log, read-only,
  and the images rendered for a browser;
- :mod:`sorter.station.export`: operator verdicts out as a labelled ``sorter-log/1`` log;
- :mod:`sorter.station.promotion`: a candidate model evaluated on the operators' labels,
  and its promotion through the controller's model reload;
- :mod:`sorter.station.app`: the Starlette application;
- :mod:`sorter.station.cli`: ``sorter station`` and ``sorter labels export``.
"""
