"""What runs inside a worker process: the bootstep, node identity, heartbeat, the runner, `jobs.execute`."""
