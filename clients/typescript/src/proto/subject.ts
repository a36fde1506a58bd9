// Subject syntax and matching (section 5).

/** Unicode White_Space or general category Cc (section 5.2). */
export function isSpaceOrControl(c: number): boolean {
  if (c <= 0x20) return true; // Cc U+0000..=U+001F and SPACE
  if (c < 0x7f) return false;
  if (c <= 0xa0) return true; // Cc U+007F..=U+009F, U+0085, U+00A0
  return (
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000
  );
}

/** Whether a string has whitespace or a control character. */
export function hasSpaceOrControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    if (isSpaceOrControl(s.charCodeAt(i))) return true;
  }
  return false;
}

/**
 * Why `s` is not a valid subject (a filter when `filter`, else a literal), or null when it is.
 * The empty string is "no subject" and is reported as such.
 */
export function subjectError(s: string, filter: boolean): string | null {
  if (s.length === 0) return "empty subject";
  let tokenStart = 0;
  let wildcard = false;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : 0x2e;
    if (c === 0x2e) {
      const len = i - tokenStart;
      if (len === 0) return "empty token";
      if (wildcard) {
        const one = s.charCodeAt(tokenStart);
        if (len !== 1) return "wildcard inside a token";
        if (one === 0x3e && i !== s.length) return "'>' must be the last token";
        if (!filter) return "wildcards are only allowed in subscriptions";
      }
      tokenStart = i + 1;
      wildcard = false;
    } else if (c === 0x2a || c === 0x3e) {
      wildcard = true;
    } else if (isSpaceOrControl(c)) {
      return "whitespace or control character";
    }
  }
  return null;
}

/** Whether `s` is a valid literal subject (PUBLISH, REQUEST). */
export function isValidSubject(s: string): boolean {
  return subjectError(s, false) === null;
}

/** Whether `s` is a valid subject filter (SUBSCRIBE, REGISTER). */
export function isValidFilter(s: string): boolean {
  return subjectError(s, true) === null;
}

/** Whether `filter` matches the literal `subject` (section 5.4). */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const t = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    const tok = f[i];
    if (tok === ">") return t.length > i;
    if (i >= t.length) return false;
    if (tok !== "*" && tok !== t[i]) return false;
  }
  return f.length === t.length;
}
