"""`invoke report`: a security report per host, as a self-contained HTML page and as Markdown.

- :mod:`~botvps.report.probe`: the read-only script the playbook runs on the host (one JSON out);
- :mod:`~botvps.report.sshaudit`: ssh-audit's built-in policy, from the controller;
- :mod:`~botvps.report.scorecard` and :mod:`~botvps.report.review`: the sections, from that JSON;
- :mod:`~botvps.report.redact`: secret values masked before anything is parsed;
- :mod:`~botvps.report.render_html`, :mod:`~botvps.report.render_md`: the two outputs;
- :mod:`~botvps.report.command`: the run (inventory, playbook, ssh-audit, files).
"""
