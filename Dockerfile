# The one image every service of docker-compose.yml runs (web, beat, worker, flower, migrate).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SCHEDULER_ENVIRONMENT=production \
    SCHEDULER_WEB_HOST=0.0.0.0 \
    SCHEDULER_FLOWER_HOST=0.0.0.0

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY manage.py ./
COPY scheduler_project ./scheduler_project
COPY accounts ./accounts
COPY jobs ./jobs
COPY nodes ./nodes
COPY monitoring ./monitoring
COPY worker ./worker

# Static files are collected at build time (whitenoise serves them). Settings refuse to load in production
# without a strong SECRET_KEY, so this step alone gets a throwaway one; the real key comes from .env.
RUN SECRET_KEY="build-only-$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --no-input -v 0

# Run as an unprivileged user; only var/ (runtime files) is writable.
RUN useradd --create-home --uid 10001 scheduler \
    && mkdir -p /app/var \
    && chown -R scheduler:scheduler /app/var
USER scheduler

EXPOSE 8000 5555
CMD ["gunicorn", "scheduler_project.wsgi", "--config", "python:scheduler_project.gunicorn_conf"]
