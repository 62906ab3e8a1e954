// Speech in and out: recognition (continuous while listening, or one phrase for push-to-talk
// and questions) and synthesis. ``win`` is the page's window, so tests can replace both.

export class Voice {
  constructor(win, { lang = "en-US", voiceName = "" } = {}, onPhrase = () => {}) {
    this.win = win;
    this.lang = lang;
    this.voiceName = voiceName;
    this.onPhrase = onPhrase;
    this.listening = false; // hands-free: recognition runs until stopped
    this.recognition = null;
    this.waiting = []; // callers of nextPhrase(), first first
    this.lastSpoken = "";
    this.onListeningChange = () => {};
  }

  get available() {
    return Boolean(this.win.SpeechRecognition || this.win.webkitSpeechRecognition);
  }

  #start() {
    if (this.recognition) return;
    const Recognition = this.win.SpeechRecognition || this.win.webkitSpeechRecognition;
    if (!Recognition) throw new Error("this browser has no speech recognition");
    const r = new Recognition();
    r.lang = this.lang;
    r.continuous = true;
    r.interimResults = false;
    r.onresult = (event) => {
      for (let i = event.resultIndex; i < event.results.length; i++) {
        if (event.results[i].isFinal) this.#heard(event.results[i][0].transcript.trim());
      }
    };
    r.onerror = (event) => console.warn("handsfree: speech recognition", event.error);
    r.onend = () => {
      this.recognition = null;
      if (this.listening || this.waiting.length) setTimeout(() => this.#start(), 200);
    };
    this.recognition = r;
    r.start();
  }

  #stopIfIdle() {
    if (!this.listening && !this.waiting.length && this.recognition) {
      const r = this.recognition;
      this.recognition = null;
      r.onend = null;
      r.stop();
    }
  }

  #heard(text) {
    if (!text) return;
    const waiter = this.waiting.shift();
    if (waiter) {
      waiter(text);
      this.#stopIfIdle();
      return;
    }
    if (this.listening) this.onPhrase(text);
  }

  setListening(on) {
    this.listening = on;
    if (on) this.#start();
    else this.#stopIfIdle();
    this.onListeningChange(on);
  }

  /** The next phrase heard (recognition runs until then), or null after ``timeoutMs``. */
  nextPhrase(timeoutMs = 15000) {
    return new Promise((resolve) => {
      const waiter = (text) => {
        clearTimeout(timer);
        resolve(text);
      };
      const timer = setTimeout(() => {
        this.waiting = this.waiting.filter((w) => w !== waiter);
        this.#stopIfIdle();
        resolve(null);
      }, timeoutMs);
      this.waiting.push(waiter);
      this.#start();
    });
  }

  /** Says ``text``; resolves when it has been said (or failed). */
  speak(text) {
    this.lastSpoken = text;
    const synth = this.win.speechSynthesis;
    if (!synth) return Promise.resolve();
    return new Promise((resolve) => {
      const u = new this.win.SpeechSynthesisUtterance(text);
      u.lang = this.lang;
      const voice = synth.getVoices().find((v) => v.name === this.voiceName);
      if (voice) u.voice = voice;
      u.addEventListener("end", () => resolve());
      u.addEventListener("error", () => resolve());
      synth.speak(u);
    });
  }

  stopSpeaking() {
    this.win.speechSynthesis?.cancel();
  }
}
