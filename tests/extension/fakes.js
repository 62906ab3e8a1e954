// Scripted stand-ins for speech recognition, speech synthesis and Web MIDI, injected into the
// extension's pages before their own scripts run (Playwright's add_init_script). The
// extension's code runs unchanged against them; the test drives them through window.__fake:
//   __fake.say(text)        a final recognition result for every running recognizer
//   __fake.spoken           what speechSynthesis was asked to say, in order
//   __fake.midi(bytes, at, input)  a MIDI message from a fake input (timeStamp: at, or
//                           now; input: "fake-keys", the default, or "fake-pads")
//   __fake.midiLog          every message sent, with its timeStamp
//   __fake.oscillators      oscillators created on a live AudioContext (what is heard)
(() => {
  if (location.protocol !== "chrome-extension:") return; // the test pages keep the real APIs
  const fake = { spoken: [], recognitions: new Set(), midiLog: [], heard: [], oscillators: 0 };
  window.__fake = fake;

  class FakeRecognition {
    constructor() {
      Object.assign(this, { lang: "", continuous: false, interimResults: false, onresult: null, onend: null, onerror: null });
    }
    start() {
      if (fake.recognitions.has(this)) throw new DOMException("recognition has already started", "InvalidStateError");
      fake.recognitions.add(this);
    }
    stop() {
      if (fake.recognitions.delete(this)) setTimeout(() => this.onend?.({}), 0);
    }
    abort() {
      this.stop();
    }
  }
  window.SpeechRecognition = FakeRecognition;
  window.webkitSpeechRecognition = FakeRecognition;

  fake.say = (text) => {
    const running = [...fake.recognitions];
    if (!running.length) return false;
    fake.heard.push(text);
    const result = Object.assign([{ transcript: text, confidence: 0.95 }], { isFinal: true });
    for (const r of running) r.onresult?.({ resultIndex: 0, results: [result] });
    return true;
  };

  const synthesis = {
    speaking: false,
    pending: false,
    paused: false,
    speak(utterance) {
      fake.spoken.push(utterance.text);
      setTimeout(() => utterance.dispatchEvent(new Event("end")), 0);
    },
    cancel() {},
    pause() {},
    resume() {},
    getVoices: () => [],
    addEventListener() {},
    removeEventListener() {},
  };
  Object.defineProperty(window, "speechSynthesis", { value: synthesis, configurable: true });

  // Two inputs, so that the settings' choice of one can be tested.
  const inputs = [["fake-keys", "Fake Keys"], ["fake-pads", "Fake Pads"]].map(([id, name]) => (
    { id, name, manufacturer: "tests", type: "input", state: "connected", connection: "open", onmidimessage: null }));
  const access = { inputs: new Map(inputs.map((i) => [i.id, i])), outputs: new Map(), sysexEnabled: false, onstatechange: null };
  Object.defineProperty(navigator, "requestMIDIAccess", { value: async () => access, configurable: true });
  fake.midi = (data, timeStamp = performance.now(), inputId = "fake-keys") => {
    const input = access.inputs.get(inputId);
    if (!input) throw new Error(`no fake MIDI input ${inputId}`);
    fake.midiLog.push({ data, timeStamp, input: inputId });
    input.onmidimessage?.({ data: new Uint8Array(data), timeStamp });
  };

  // Count what the live context plays (offline rendering is not counted): the real nodes.
  const createOscillator = BaseAudioContext.prototype.createOscillator;
  BaseAudioContext.prototype.createOscillator = function (...args) {
    if (this instanceof AudioContext) fake.oscillators += 1;
    return createOscillator.apply(this, args);
  };
})();
