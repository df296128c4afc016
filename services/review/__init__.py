"""Review pages (`lema serve review`): people grade the corrector's corrections in a browser, as the LEMA paper did
by hand (Excellent / Good / Poor), and `lema export --min-grade` keeps poor ones out of training.

Server-rendered HTML with a little JavaScript (no build step, nothing from a CDN) over the store; grades are written
through lema.core.reviews. Auth: the bearer token named by `review.token_env` (as the admin API's), given once on
the login page and kept as a signed, HttpOnly session cookie; API clients send it as `Authorization: Bearer`.
"""
