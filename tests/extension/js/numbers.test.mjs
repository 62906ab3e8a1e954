import assert from "node:assert/strict";
import { test } from "node:test";

import { parseNumber, splitTrailingNumber } from "../../../extension/lib/numbers.js";

test("base 10 in words and digits, negative and positive", () => {
  const cases = {
    zero: 0, seven: 7, "twenty-five": 25, "three hundred and five": 305, "a hundred": 100,
    "one thousand two hundred": 1200, "two million": 2e6, "42": 42, "-305": -305,
    "minus three": -3, "negative forty two": -42, "positive nine": 9, "plus 12": 12,
  };
  for (const [text, value] of Object.entries(cases)) assert.equal(parseNumber(text), value, text);
});

test("powers of two", () => {
  const cases = {
    "two to the fifth": 32, "two to the power of ten": 1024, "2 to the 5th": 32, "2^8": 256,
    "two to the power eight": 256, "two squared": 4, "two cubed": 8,
    "minus two to the tenth": -1024, "negative two to the third": -8,
    "two to the minus three": 0.125, "two to the power of negative two": 0.25,
    "positive two to the sixteenth": 65536, "two to the twentieth": 2 ** 20,
    "two to the twenty first": 2 ** 21,
  };
  for (const [text, value] of Object.entries(cases)) assert.equal(parseNumber(text), value, text);
});

test("not numbers", () => {
  for (const text of ["", "hello", "two apples", "minus", "two to the", "a"]) assert.equal(parseNumber(text), null, text);
});

test("a trailing number is split off the words before it", () => {
  assert.deepEqual(splitTrailingNumber("scroll down two to the five"), ["scroll down", 32]);
  assert.deepEqual(splitTrailingNumber("next minus 3"), ["next", -3]);
  assert.deepEqual(splitTrailingNumber("next"), ["next", null]);
});
