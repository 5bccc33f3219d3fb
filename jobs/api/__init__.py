"""The jobs REST API: serializers, filters and views (routes in jobs/urls.py)."""
