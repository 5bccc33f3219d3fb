"""Template helpers of the monitoring pages."""

from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def flower_url() -> str:
    """settings.SCHEDULER_FLOWER_URL (empty when Flower is not linked)."""
    return settings.SCHEDULER_FLOWER_URL
