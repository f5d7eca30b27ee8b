"""Gunicorn settings for the example. Run from the repository root:

    gunicorn -c examples/gunicorn/gunicorn.conf.py --chdir examples/gunicorn 'app:create_app()'

Options given on the command line win over this file, so
``-b 127.0.0.1:9000`` serves on another port.
"""

from flask_bgtasks import quick_stop

bind = "127.0.0.1:8000"

# Two processes with four request threads each. Every worker process has its
# own task pools (started on its first task, never in the master); the tasks
# themselves are rows of the SQLite store that all the workers share.
workers = 2
worker_class = "gthread"
threads = 4

# On SIGTERM, Gunicorn gives each worker graceful_timeout seconds to exit
# before it kills it with SIGKILL. A worker first finishes the requests in
# progress, then, as it exits, Flask-BGTasks lets its queued and running
# tasks finish for at most BGTASKS_SHUTDOWN_TIMEOUT seconds, and ends the
# ones still running then with a warning naming each task. A durable task
# ended so goes back to the store as queued, and the next worker runs it.
#
# So keep BGTASKS_SHUTDOWN_TIMEOUT below graceful_timeout, with room for
# your slowest request. Keep it below `timeout` too: a worker that restarts
# by itself (max_requests) drains its tasks while the master keeps checking
# its heartbeat, and kills it as "WORKER TIMEOUT" after `timeout` seconds.
# Tasks still running when Gunicorn kills a worker are cut short: durable ones
# run again in another worker once their lease (BGTASKS_STORE_LEASE, 15 s)
# has run out, the others are marked failed with the error type TaskLost.
graceful_timeout = 30
timeout = 30
raw_env = ["FLASK_BGTASKS_SHUTDOWN_TIMEOUT=20"]


# Ctrl-C (SIGINT) or SIGQUIT is Gunicorn's quick shutdown: it calls this hook
# in each worker, and then exits it. Without the hook, the worker would still
# drain its tasks for up to BGTASKS_SHUTDOWN_TIMEOUT. With it, the queued
# tasks are cancelled (durable ones go back to the store for the next
# server), the running ones are ended, each is logged with its id, and the
# whole server is gone within a few seconds.
def worker_int(worker):
    quick_stop()
