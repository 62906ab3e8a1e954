// The find history: the words of each "find", newest last, so that earlier searches can be
// repeated ("find again") or searched together ("find together").

export class FindHistory {
  constructor(entries = [], limit = 10) {
    this.limit = limit;
    this.entries = entries.slice(-limit);
  }

  /** Remembers ``words`` as the newest search (moving a repeated one to the end). */
  add(words) {
    const text = words.trim().toLowerCase();
    if (!text) return;
    this.entries = this.entries.filter((e) => e !== text);
    this.entries.push(text);
    if (this.entries.length > this.limit) this.entries.shift();
  }

  last() {
    return this.entries.length ? this.entries[this.entries.length - 1] : null;
  }

  /** Every remembered search, oldest first: what "find together" looks for at once. */
  together() {
    return [...this.entries];
  }

  clear() {
    this.entries = [];
  }
}
