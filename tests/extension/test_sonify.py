"""The page as sound: a test page's layout, read by the content script, rendered by
lib/sonify.js in an OfflineAudioContext, and checked by spectral analysis in numpy."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.extension.conftest import Browser, launch, tab_id

RATE = 22050
SLOT = 0.12  # seconds per grid cell (lib/sonify.js SLOT_SECONDS)
STRINGS = {0: ("violin", 24), 1: ("violin", 24), 2: ("viola", 12), 3: ("cello", 0), 4: ("cello", 0)}
HORN = -12

# In the panel page: the content script's layout of a tab, rendered offline by lib/sonify.js.
# The samples come back as the base64 of their float32 bytes (a JSON list is slow).
RENDER = """async ([tabId, rate]) => {
  const sonify = await import('./lib/sonify.js');
  const layout = await chrome.tabs.sendMessage(tabId, {target: 'page', action: 'layout'});
  const samples = await sonify.renderLayout(layout, rate);
  const bytes = new Uint8Array(samples.buffer, samples.byteOffset, samples.byteLength);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 8192) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return {layout, samples: btoa(binary)};
}"""


def hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def key(cell: int) -> int:
    """The key a grid cell sounds on: C3 (48) at the bottom left, C5 (72) at the top right."""
    row, col = divmod(cell, 5)
    return 48 + (4 - row) * 5 + col


@pytest.fixture(scope="module")
def rendered(
    playwright_driver: Any, site: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Renders a test page's layout once per module: (layout, samples)."""
    with launch(playwright_driver, tmp_path_factory.mktemp("profile")) as browser:
        yield _renderer(browser, site)


def _renderer(browser: Browser, site: str) -> Any:
    panel = browser.panel()
    cache: dict[str, tuple[dict[str, Any], np.ndarray]] = {}

    def render(path: str) -> tuple[dict[str, Any], np.ndarray]:
        if path not in cache:
            page = browser.open(f"{site}{path}")
            result = panel.evaluate(RENDER, [tab_id(panel, page.url), RATE])
            samples = np.frombuffer(base64.b64decode(result["samples"]), dtype="<f4")
            cache[path] = (result["layout"], samples.astype(np.float64))
        return cache[path]

    return render


def peak_hz(samples: np.ndarray, cell: int) -> float:
    """The strongest frequency while a cell's slot sounds (its middle, away from neighbours)."""
    start = int((cell * SLOT + 0.02) * RATE)
    part = samples[start : start + int(0.09 * RATE)]
    spectrum = np.abs(np.fft.rfft(part * np.hanning(len(part)), n=1 << 16))
    return float(np.fft.rfftfreq(1 << 16, 1 / RATE)[np.argmax(spectrum)])


def band_share(samples: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def strokes(samples: np.ndarray, cell: int) -> int:
    """How many times a cell's note sounds: rises of its 5 ms loudness past half its peak."""
    frame = int(0.005 * RATE)
    start = int(cell * SLOT * RATE)
    count = int(SLOT * RATE) // frame
    frames = samples[start : start + count * frame].reshape(count, frame)
    level = np.sqrt((frames**2).mean(axis=1))
    loud = level > 0.5 * level.max()
    return int(loud[0]) + int(np.count_nonzero(loud[1:] & ~loud[:-1]))


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2)))


def near(found: float, expected: float) -> bool:
    return abs(found - expected) / expected < 0.03


def in_trill(found: float, note: int) -> bool:
    """Whether ``found`` lies in a trill of ``note`` and the whole tone above (3% leeway: the
    trill's short tones blur into each other in the spectrum of a low note)."""
    return hz(note) * 0.97 <= found <= hz(note + 2) * 1.03


def test_links_sound_as_string_trills_by_position(rendered: Any) -> None:
    layout, samples = rendered("/links")
    assert [c["links"] for c in layout["cells"]] == [4] * 25
    assert all(c["images"] == c["text"] == 0 for c in layout["cells"])
    for cell in range(25):
        voice, transpose = STRINGS[cell // 5]
        note = key(cell) + transpose
        found = peak_hz(samples, cell)
        # a trill: the note and the whole tone above it
        assert in_trill(found, note), (cell, voice, found, hz(note))
    # The violins of the two top rows: their energy lies above the lowest violin note.
    top = samples[: int(10 * SLOT * RATE)]
    assert band_share(top, hz(min(key(c) for c in range(10)) + 24) * 0.95, RATE / 2) > 0.99


def test_images_sound_as_a_horn_below_the_strings(rendered: Any) -> None:
    layout, samples = rendered("/images")
    assert [c["images"] for c in layout["cells"]] == [2] * 25
    for cell in range(25):
        found = peak_hz(samples, cell)
        assert near(found, hz(key(cell) + HORN)), (cell, found, hz(key(cell) + HORN))
    _, links = rendered("/links")
    horn_band = (hz(48 + HORN) * 0.95, hz(72 + HORN) * 1.05)
    assert band_share(samples, *horn_band) > 0.9
    # Links sound in the horn's range only where the cellos play (the two bottom rows).
    assert band_share(links, *horn_band) < 0.35
    assert band_share(links[: int(15 * SLOT * RATE)], *horn_band) < 0.05


def test_a_denser_page_is_louder(rendered: Any) -> None:
    sparse_layout, sparse = rendered("/sparse-links")
    assert [c["links"] for c in sparse_layout["cells"]] == [1] * 25
    _, dense = rendered("/links")
    assert rms(dense) > 1.5 * rms(sparse)
    # and its notes repeat more: three strokes a cell where four links are, two where one is
    assert [strokes(dense, cell) for cell in range(25)] == [3] * 25
    assert [strokes(sparse, cell) for cell in range(25)] == [2] * 25
    # the same voices: only volume and repetition follow the density
    for cell in (0, 12, 24):
        voice, transpose = STRINGS[cell // 5]
        assert in_trill(peak_hz(sparse, cell), key(cell) + transpose), (cell, voice)
