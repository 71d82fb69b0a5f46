"""Who may use the web app: on a loopback address anyone on this machine; on any other address only a browser that
presents the token, once in the address (``?token=...``), then as a cookie for every page, file and websocket.
Compared in constant time; refusals are a short page that says what to do, never the app."""

from __future__ import annotations

import hmac

from aiohttp import web

TOKEN_QUERY = "token"
TOKEN_COOKIE = "sdseg_web_token"
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
