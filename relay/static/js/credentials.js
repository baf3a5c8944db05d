// What the page sends as Socket.IO `auth`.
//
// Open mode (no RELAY_SECRET): `{user: nickname}`. When the server requires tokens, the page
// sends `{token}` instead; a token can be handed to the page in the URL fragment
// (`/#token=eyJ...`, kept in localStorage and removed from the address bar) until relay
// grows an endpoint the page can fetch one from — `tokenProvider` is the one place to add it.

const TOKEN_KEY = "relay.token";

function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

/** A token for this page, or null in open mode. May become a fetch to relay later. */
export async function tokenProvider() {
  takeTokenFromFragment();
  return localStorage.getItem(TOKEN_KEY);
}

/** Forget a token the server refused, so the page falls back to a nickname. */
export function forgetToken() {
  localStorage.removeItem(TOKEN_KEY);
}

/** The `auth` object for the next connection attempt. */
export async function authFor(nickname) {
  const token = await tokenProvider();
  return token ? { token } : { user: nickname };
}
