"""Colours of message and delivery statuses, shared by the history lists, the conversation and the dashboard."""

from django.utils.html import format_html

STATUS_COLOURS = {
    "pending": "#6e7781",
    "published": "#2a6ebb",
    "handled": "#1a7f37",
    "failed": "#bf8700",
    "dead": "#cf222e",
    "revoked": "#8250df",
    "expired": "#9a6700",
    "succeeded": "#1a7f37",
    "retrying": "#bf8700",
    "running": "#2a6ebb",
}


def coloured(status: str) -> str:
    return format_html(
        '<b class="catga-status catga-status-{}" style="color:{}">{}</b>',
        status,
        STATUS_COLOURS.get(status, "#000"),
        status,
    )
