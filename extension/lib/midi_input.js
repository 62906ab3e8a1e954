// Web MIDI input: every message of the chosen input (or of all inputs) goes to ``onMessage``
// as ``(data: number[], timeStamp)``, timeStamp on performance.now()'s clock.

export async function connectMidi(nav, inputId, onMessage) {
  if (!nav.requestMIDIAccess) throw new Error("this browser has no Web MIDI");
  const access = await nav.requestMIDIAccess();
  const attach = () => {
    for (const input of access.inputs.values()) {
      input.onmidimessage = !inputId || input.id === inputId ? (e) => onMessage([...e.data], e.timeStamp) : null;
    }
  };
  attach();
  access.onstatechange = attach;
  return {
    inputs: () => [...access.inputs.values()].map((i) => ({ id: i.id, name: i.name })),
    close() {
      for (const input of access.inputs.values()) input.onmidimessage = null;
      access.onstatechange = null;
    },
  };
}
