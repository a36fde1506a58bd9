// spec/vectors/subjects.json: syntax and matching.

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { isValidFilter, isValidSubject, subjectMatches } from "../src/proto/index.js";

const v = JSON.parse(readFileSync(fileURLToPath(new URL("../../../spec/vectors/subjects.json", import.meta.url)), "utf8"));

describe("subjects.json", () => {
  it("valid filters are accepted", () => {
    for (const s of v.valid) expect(isValidFilter(s), JSON.stringify(s)).toBe(true);
  });
  it("invalid subjects are refused as filters and literals", () => {
    for (const s of v.invalid) {
      expect(isValidFilter(s), JSON.stringify(s)).toBe(false);
      expect(isValidSubject(s), JSON.stringify(s)).toBe(false);
    }
  });
  it("wildcards are filters only", () => {
    for (const s of v.literal_only_invalid) {
      expect(isValidFilter(s)).toBe(true);
      expect(isValidSubject(s)).toBe(false);
    }
  });
  it("matching", () => {
    for (const m of v.matches) expect(subjectMatches(m.filter, m.subject), `${m.filter} ~ ${m.subject}`).toBe(m.matches);
  });
});
