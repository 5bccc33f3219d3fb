"""Server-side SVG for the dashboard: no JavaScript chart library, nothing fetched at run time."""

from __future__ import annotations

from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 200, 36, 22, 10


def _n(*values: float) -> list[str]:
    """Coordinates as short decimal strings (format_html escapes its arguments before formatting)."""
    return [f"{value:.1f}" for value in values]


def throughput_svg(series: list[dict[str, Any]]) -> SafeString:
    """Bars of finished executions per hour (failures in red on top of them) with an axis and legend."""
    peak = max([row["total"] for row in series] + [1])
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(series), 1)
    bars = []
    for i, row in enumerate(series):
        x = PAD_LEFT + i * slot + 2
        ok_h = (row["total"] - row["failed"]) / peak * plot_h
        fail_h = row["failed"] / peak * plot_h
        base = PAD_TOP + plot_h
        label = f"{row['hour']:%H}:00 — {row['total']} finished, {row['failed']} failed"
        coords = _n(x, base - ok_h - fail_h, slot - 4, ok_h, x, base - fail_h, slot - 4, fail_h)
        bars.append(
            format_html(
                '<g class="bar"><title>{}</title>'
                '<rect class="ok" x="{}" y="{}" width="{}" height="{}"></rect>'
                '<rect class="failed" x="{}" y="{}" width="{}" height="{}"></rect></g>',
                label,
                *coords,
            )
        )
    ticks = format_html_join(
        "",
        '<text class="tick" x="{}" y="{}">{}</text>',
        (
            (*_n(PAD_LEFT + i * slot + slot / 2, HEIGHT - 6), f"{row['hour']:%H}")
            for i, row in enumerate(series)
            if i % 3 == 0
        ),
    )
    return format_html(
        '<svg class="chart" id="throughput-chart" viewBox="0 0 {} {}" role="img" '
        'aria-label="Executions finished and failed per hour, last 24 hours">'
        '<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"></line>'
        '<text class="tick" x="4" y="{}">{}</text><text class="tick" x="4" y="{}">0</text>{}{}</svg>',
        WIDTH, HEIGHT, PAD_LEFT, PAD_TOP + plot_h, WIDTH - 8, PAD_TOP + plot_h,
        PAD_TOP + 10, peak, PAD_TOP + plot_h, mark_safe("".join(bars)), ticks,  # noqa: S308 - built by format_html
    )  # fmt: skip


def percent(part: float, whole: float) -> float:
    """part/whole in percent, 0..100 (0 when whole is 0)."""
    return 0.0 if not whole else max(0.0, min(100.0, part * 100.0 / whole))
