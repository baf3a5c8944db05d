// Who the page connects as, and the access token it may hold.
//
// Open mode (no RELAY_SECRET): the page sends `auth: {user: nickname}`. A relay with a secret
// lets a connection in only with `auth: {token}`, a JWT its operator signs (`relay token NAME`):
// the user is the token's `sub`, and the page shows that name instead of a nickname field.
//
// How the page learns a token is needed: relay says so in `<meta name="relay-auth">` (see
// relay/page.py), and any refused connect (`connect_error` with `data.code` `unauthorized`)
// says so too, for a page served from elsewhere.
//
// Where a token comes from: the field the page shows, or a link `/#token=eyJ...`. The fragment
// never reaches a server (nor its logs, nor a Referer); the page moves the token to
// sessionStorage and removes it from the address bar at once, so it does not linger in the
// history, a bookmark or a copied link. sessionStorage keeps it across reloads of this tab and
// forgets it when the tab closes; a refused token is forgotten at once.
//
// The page reads the token's claims only to show who it names and until when: the server
// checks the signature and the expiry (a browser's clock may be wrong, so the page never
// refuses a token for its `exp`).

const TOKEN_KEY = "relay.token"; // in sessionStorage (older pages kept it in localStorage)

function session() {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage blocked: the token lives as long as the page
  }
}

let memoryToken = null;

/** Whether relay said it wants a token (`<meta name="relay-auth" content="token">`). */
export function serverWantsToken(doc = document) {
  return doc.querySelector('meta[name="relay-auth"]')?.getAttribute("content") === "token";
}

/**
 * Take `token` out of the URL fragment (`#token=...`, among other parameters or alone): store
 * it for this tab's session and rewrite the address without it. Answers whether one was there.
 */
export function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token === null) return false;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  if (token.trim()) saveToken(token.trim());
  return Boolean(token.trim());
}

export function savedToken() {
  const store = session();
  return (store ? store.getItem(TOKEN_KEY) : memoryToken) || null;
}

export function saveToken(token) {
  memoryToken = token;
  session()?.setItem(TOKEN_KEY, token);
}

/** Forget the token (refused, expired, or the person signs out). */
export function forgetToken() {
  memoryToken = null;
  session()?.removeItem(TOKEN_KEY);
}

/** Drop a token an older version of the page left in localStorage (it outlived the tab). */
export function forgetLegacyToken() {
  try {
    window.localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage blocked: nothing was kept there either
  }
}

/**
 * A pasted value as a token: the token itself, or a link holding `#token=...` (the operator
 * may have sent the link; pasting it into the field should work too).
 */
export function tokenFromInput(value) {
  const text = value.trim();
  const at = text.indexOf("#");
  if (at >= 0) {
    const token = new URLSearchParams(text.slice(at + 1)).get("token");
    if (token) return token.trim();
  }
  return text;
}

function base64UrlJson(part) {
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.codePointAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** The claims of a JWT, unverified ({sub, exp, rooms, ...}), or null when it is not one. */
export function tokenClaims(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]+$/.test(p))) return null;
  try {
    const claims = base64UrlJson(parts[1]);
    return claims && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/** Why `token` cannot be a relay token, or "" when it may be (the server has the last word). */
export function tokenProblem(token) {
  if (!token) return "Paste the access token you were given.";
  const claims = tokenClaims(token);
  if (!claims) return "That is not a token: a token is three parts separated by dots (eyJ….eyJ….…).";
  if (typeof claims.sub !== "string" || !claims.sub) return "That token names no user (no 'sub').";
  return "";
}

/**
 * The Socket.IO `auth` for a token: the token, and its `sub` as `user` too, so a page holding a
 * token still gets its name from a relay in open mode (which ignores `token`).
 */
export function tokenAuth(token) {
  const sub = tokenClaims(token)?.sub;
  return typeof sub === "string" && sub ? { token, user: sub } : { token };
}
