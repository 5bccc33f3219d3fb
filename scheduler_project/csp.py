"""A strict Content-Security-Policy on every HTML response (admin, dashboard, API docs).

Scripts come from this origin only, plus the inline scripts listed here by hash: a script injected into a
page (an XSS) does not run. Two allowances, both kept as narrow as the pages permit:

- `style-src 'unsafe-inline'`: the dashboard's bars are `style="width: N%"` attributes computed per
  request, and its pages and Swagger UI carry a `<style>` block. Inline CSS cannot run code; the cost is
  that injected markup could restyle a page.
- Swagger UI (`/api/v1/docs/`) renders its start-up script inline, with the CSRF token in it, so no hash
  can name it: that path alone gets `script-src 'self' 'unsafe-inline'`. Serving the docs with
  drf-spectacular's `SpectacularSwaggerSplitView` (the script from `?script`) would remove the exception.

A response that already carries a Content-Security-Policy keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

# sha256 of each inline <script> a template renders; tests/scheduler_project/test_csp.py pins each one to
# its template, so editing the script without updating the hash fails there (and in the browser).
INLINE_SCRIPT_HASHES = {
    "monitoring/dashboard.html": "sha256-3StNFD8aavAMTU3/lOFIkT+EDObfsWJZD2bBolBfyCU=",
}
# Paths whose page needs an inline script no hash can name (see above).
INLINE_SCRIPT_PATHS = ("/api/v1/docs/",)


def _policy(script_src: str) -> str:
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {script_src}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


POLICY = _policy(" ".join(["'self'", *(f"'{h}'" for h in INLINE_SCRIPT_HASHES.values())]))
INLINE_SCRIPT_POLICY = _policy("'self' 'unsafe-inline'")


class ContentSecurityPolicyMiddleware:
    """Adds POLICY (INLINE_SCRIPT_POLICY under INLINE_SCRIPT_PATHS) to HTML responses."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        content_type = response.get("Content-Type", "")
        if content_type.startswith("text/html") and "Content-Security-Policy" not in response:
            inline = request.path.startswith(INLINE_SCRIPT_PATHS)
            response["Content-Security-Policy"] = INLINE_SCRIPT_POLICY if inline else POLICY
        return response
