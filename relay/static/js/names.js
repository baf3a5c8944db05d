// Name rules from the relay contract, checked in the page so people get a hint before the
// server says `bad_request`.

const NAME_CHARS = /^[A-Za-z0-9_\-.:@/]+$/;

/** Why `value` is not a valid user name, or "" when it is. */
export function userNameProblem(value) {
  if (value.length === 0) return "Pick a nickname to start.";
  if (value.length > 64) return `At most 64 characters (this one has ${value.length}).`;
  if (!NAME_CHARS.test(value)) return "Use letters, digits and _ - . : @ / only (no spaces).";
  return "";
}

/** Why `value` is not a valid room name, or "" when it is. */
export function roomNameProblem(value) {
  if (value.length === 0) return "Type a room name.";
  if (value.length > 128) return `At most 128 characters (this one has ${value.length}).`;
  if (!NAME_CHARS.test(value)) return "Use letters, digits and _ - . : @ / only (no spaces).";
  return "";
}
