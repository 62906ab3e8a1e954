// Spoken numbers: base 10 ("minus three hundred and five", "-305") or powers of two ("two to
// the fifth", "minus two to the power of ten", "2^-3"). One job: words in, a number out.

const UNITS = {
  zero: 0, oh: 0, nought: 0, a: 1, one: 1, two: 2, three: 3, four: 4, five: 5, six: 6,
  seven: 7, eight: 8, nine: 9, ten: 10, eleven: 11, twelve: 12, thirteen: 13, fourteen: 14,
  fifteen: 15, sixteen: 16, seventeen: 17, eighteen: 18, nineteen: 19,
};
const TENS = {
  twenty: 20, thirty: 30, forty: 40, fifty: 50, sixty: 60, seventy: 70, eighty: 80, ninety: 90,
};
const SCALES = { thousand: 1e3, million: 1e6, billion: 1e9 };
// Ordinals whose cardinal is not the word without "th".
const ORDINALS = {
  first: "one", second: "two", third: "three", fifth: "five", eighth: "eight", ninth: "nine",
  twelfth: "twelve",
};
const SIGNS = { minus: -1, negative: -1, plus: 1, positive: 1 };

/** Lower-case word tokens; "-3" becomes "minus 3", "2^5" "2 to the 5", "twenty-five" two words. */
export function tokenize(text) {
  return String(text)
    .toLowerCase()
    .replace(/\^/g, " to the ")
    .replace(/(^|\s)[-\u2212](?=\d)/g, "$1minus ")
    .replace(/(^|\s)\+(?=\d)/g, "$1plus ")
    .replace(/[-,]/g, " ")
    .split(/\s+/)
    .filter(Boolean);
}

function cardinalWord(token) {
  if (/^\d+(\.\d+)?$/.test(token)) return Number(token);
  const ordinalDigits = /^(\d+)(st|nd|rd|th)$/.exec(token);
  if (ordinalDigits) return Number(ordinalDigits[1]);
  if (token in UNITS) return UNITS[token];
  if (token in TENS) return TENS[token];
  let word = ORDINALS[token];
  if (!word && token.endsWith("ieth")) word = token.slice(0, -4) + "y";
  if (!word && token.endsWith("th")) word = token.slice(0, -2);
  if (word && word in UNITS) return UNITS[word];
  if (word && word in TENS) return TENS[word];
  return null;
}

/** A non-negative base-10 number from word tokens ("three hundred and five"); null if any
 * token is not part of a number. */
export function parseCardinal(tokens) {
  const words = tokens.filter((t) => t !== "and");
  if (words.length === 0 || (words.length === 1 && words[0] === "a")) return null;
  let total = 0;
  let current = 0;
  for (const token of words) {
    if (token === "hundred" || token === "hundredth") {
      current = (current || 1) * 100;
    } else if (token in SCALES) {
      total += (current || 1) * SCALES[token];
      current = 0;
    } else {
      const value = cardinalWord(token);
      if (value === null) return null;
      current += value;
    }
  }
  return total + current;
}

function takeSign(tokens) {
  let sign = 1;
  let i = 0;
  while (i < tokens.length && tokens[i] in SIGNS) sign *= SIGNS[tokens[i++]];
  return [sign, tokens.slice(i)];
}

function signedCardinal(tokens) {
  const [sign, rest] = takeSign(tokens);
  const value = parseCardinal(rest);
  return value === null ? null : sign * value;
}

/** The exponent after "two to the": "fifth", "power of ten", "minus three". */
function exponent(tokens) {
  let rest = tokens;
  if (rest[0] === "power") rest = rest.slice(rest[1] === "of" ? 2 : 1);
  return signedCardinal(rest);
}

/** The number ``text`` says, or null when it says something else. */
export function parseNumber(text) {
  const [sign, tokens] = takeSign(tokenize(text));
  if (tokens.length === 0) return null;
  const two = tokens[0] === "two" || tokens[0] === "2";
  if (two && tokens.length === 2 && (tokens[1] === "squared" || tokens[1] === "cubed")) {
    return sign * (tokens[1] === "squared" ? 4 : 8);
  }
  if (two && tokens[1] === "to" && tokens[2] === "the" && tokens.length > 3) {
    const power = exponent(tokens.slice(3));
    return power === null ? null : sign * 2 ** power;
  }
  const value = parseCardinal(tokens);
  return value === null ? null : sign * value;
}

/** Splits ``text`` into leading words and a trailing number ("scroll down two to the five" →
 * ["scroll down", 32]); the number is null when the text does not end with one. */
export function splitTrailingNumber(text) {
  const tokens = tokenize(text);
  for (let start = 0; start < tokens.length; start++) {
    const value = parseNumber(tokens.slice(start).join(" "));
    if (value !== null) return [tokens.slice(0, start).join(" "), value];
  }
  return [tokens.join(" "), null];
}
