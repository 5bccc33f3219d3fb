"""gunicorn settings for the `web` process (Procfile and docker-compose.yml run the same command).

Read from the environment so one command line serves both: SCHEDULER_WEB_HOST (127.0.0.1; 0.0.0.0 in a
container), SCHEDULER_WEB_PORT (8000) and SCHEDULER_WEB_WORKERS (2). A process manager's PORT is ignored.
"""

import os

bind = f"{os.environ.get('SCHEDULER_WEB_HOST', '127.0.0.1')}:{os.environ.get('SCHEDULER_WEB_PORT', '8000')}"
workers = int(os.environ.get("SCHEDULER_WEB_WORKERS", "2"))
accesslog = "-"
errorlog = "-"
# A worker blocked longer than this is killed and replaced; requests are short, long work runs in Celery.
timeout = 60
graceful_timeout = 20
# Behind a proxy in production; gunicorn trusts X-Forwarded-* only from these addresses.
forwarded_allow_ips = os.environ.get("SCHEDULER_FORWARDED_ALLOW_IPS", "127.0.0.1")
# No runtime control socket: its default path ($HOME/.gunicorn/gunicorn.ctl) is shared by every gunicorn of
# the user, so a second instance (a test run beside `make up`) would take it over.
control_socket_disable = True
