"""Who may use the web app: on a loopback address anyone on this machine, through a loopback host name only (a page
of another site that a DNS rebinding points at 127.0.0.1 still names its own host: refused); on any other address
only a browser that presents the token, once in the address (``?token=...``), then as a cookie for every page, file
and websocket. Compared in constant time; refusals are a short page that says what to do, never the app."""

from __future__ import annotations

import hmac

from aiohttp import web

from SDSegSlicerLib.remote_server import host_name, is_loopback

TOKEN_QUERY = "token"
TOKEN_COOKIE = "sdseg_web_token"
FOREIGN_HOST_PAGE = ("<!doctype html><title>SDSegSlicer Web: loopback only</title><body style='font-family:sans-serif'>"
                     "<h1>SDSegSlicer Web</h1><p>This server without a token answers only addresses of this machine "
                     "(127.0.0.1, localhost, [::1]).</p></body>")
REFUSED_PAGE = ("<!doctype html><title>SDSegSlicer Web: token needed</title><body style='font-family:sans-serif'>"
                "<h1>SDSegSlicer Web</h1><p>This server needs its access token: open the address it printed at "
                "start, <code>http://HOST:PORT/?token=TOKEN</code>.</p></body>")


def token_middleware(token: str):
    """An aiohttp middleware that answers 401 unless the request carries ``token`` (query or cookie); a right
    query token is kept in an HttpOnly, same-site cookie."""

    @web.middleware
    async def require_token(request: web.Request, handler):
        given_query = request.query.get(TOKEN_QUERY, "")
        given = given_query or request.cookies.get(TOKEN_COOKIE, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(status=401, text=REFUSED_PAGE, content_type="text/html")
        response = await handler(request)
        if given_query and isinstance(response, web.StreamResponse) and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    return require_token


def loopback_host_middleware():
    """An aiohttp middleware that answers 403 to a request whose Host header names no loopback host (or none)."""

    @web.middleware
    async def require_loopback_host(request: web.Request, handler):
        if not is_loopback(host_name(request.headers.get("Host", ""))):
            return web.Response(status=403, text=FOREIGN_HOST_PAGE, content_type="text/html")
        return await handler(request)

    return require_loopback_host
