"""Voice commands and MIDI hotkeys, end to end: the unpacked extension in headless Chromium,
its panel page driven through scripted speech recognition, speech synthesis and Web MIDI
(tests/extension/fakes.js)."""

from __future__ import annotations

from typing import Any

from tests.extension.conftest import (
    Browser,
    chord,
    eventually,
    midi,
    run_command,
    say,
    say_and_hear,
    spoken,
    storage,
    tab_id,
    wait_spoken,
)

SHOPPING_CHORD = [48, 52, 55]


def _named(panel: Any, name: str) -> dict[str, Any]:
    [entry] = [e for e in storage(panel, "local", "namedTabs") or [] if e["name"] == name]
    return dict(entry)


def _name_current_tab(panel: Any, notes: list[int], name: str) -> None:
    before = len(panel.evaluate("window.__fake.spoken"))
    chord(panel, notes)
    wait_spoken(panel, lambda s: s == "Name this tab", before)
    say_and_hear(panel, name, "Tab named")


def _active_tab(panel: Any) -> str:
    return str(
        panel.evaluate(
            "chrome.tabs.query({}).then(ts => ts.filter(t => t.active && "
            "!t.url.startsWith('chrome-extension:')).map(t => t.url)[0] ?? '')"
        )
    )


def test_chord_names_the_tab_reads_it_back_and_switches_to_it(browser: Browser, site: str) -> None:
    shop = browser.open(f"{site}/shop")
    news = browser.open(f"{site}/news")
    panel = browser.panel()
    assert browser.icon() == ("off", "")
    panel.click("#listen")
    eventually(panel, lambda: browser.icon() == ("listening", "ON"), "the listening icon")

    shop.bring_to_front()
    _name_current_tab(panel, SHOPPING_CHORD, "shopping")
    entry = _named(panel, "shopping")
    assert entry["chord"] == SHOPPING_CHORD
    assert entry["tabId"] == tab_id(panel, f"{site}/shop")
    assert entry["url"] == f"{site}/shop" and entry["title"] == "Shop"

    # A second chord names the news, with a command that runs whenever it switches there.
    news.bring_to_front()
    assert _active_tab(panel) == f"{site}/news"
    _name_current_tab(panel, [48, 50, 53, 57], "headlines then find kiwis")
    assert _named(panel, "headlines")["command"] == "find kiwis"
    say_and_hear(panel, "switch to shopping", "Switched to shopping")
    assert _active_tab(panel) == f"{site}/shop"
    before = len(panel.evaluate("window.__fake.spoken"))
    chord(panel, [48, 50, 53, 57])
    wait_spoken(panel, lambda s: s == "No match for kiwis", before)
    assert panel.evaluate("window.__fake.spoken")[before:] == [
        "Switched to headlines",
        "No match for kiwis",
    ]
    assert _active_tab(panel) == f"{site}/news"
    say_and_hear(panel, "switch to shopping", "Switched to shopping")
    assert _active_tab(panel) == f"{site}/shop"

    # The chord itself switches too, once it is known.
    news.bring_to_front()
    before = len(panel.evaluate("window.__fake.spoken"))
    chord(panel, SHOPPING_CHORD)
    wait_spoken(panel, lambda s: s == "Switched to shopping", before)
    assert _active_tab(panel) == f"{site}/shop"

    # Closing the tab detaches the name; "switch to" finds the page again through the history.
    shop.close()
    eventually(panel, lambda: _named(panel, "shopping")["tabId"] is None, "detaching")
    say_and_hear(panel, "switch to shopping", "Switched to shopping")
    reopened = _named(panel, "shopping")
    assert reopened["tabId"] == tab_id(panel, f"{site}/shop")
    assert _active_tab(panel) == f"{site}/shop"

    # Closed again and reopened by the user: the page's name is found again.
    panel.evaluate("id => chrome.tabs.remove(id)", reopened["tabId"])
    eventually(panel, lambda: _named(panel, "shopping")["tabId"] is None, "detaching")
    browser.open(f"{site}/shop")
    shop_again = tab_id(panel, f"{site}/shop")
    eventually(panel, lambda: _named(panel, "shopping")["tabId"] == shop_again, "reattaching")

    # The icon goes back to off when the panel closes.
    panel.close()
    eventually(news, lambda: browser.icon() == ("off", ""), "the icon going off")


def test_find_keeps_a_history_and_searches_it_together(browser: Browser, site: str) -> None:
    shop = browser.open(f"{site}/shop")
    panel = browser.panel()
    panel.click("#listen")
    shop.bring_to_front()

    assert shop.evaluate("scrollY") == 0
    assert say_and_hear(panel, "find apples", "match") == "3 matches: 3 for apples"
    assert shop.evaluate("scrollY") > 1000  # the first match, far down, is in view
    assert say_and_hear(panel, "find pears", "match") == "2 matches: 2 for pears"
    assert say_and_hear(panel, "find together", "match") == ("5 matches: 3 for apples, 2 for pears")
    assert say_and_hear(panel, "find history", "searched") == "You searched: apples, pears"
    assert storage(panel, "local", "findHistory") == ["apples", "pears"]
    assert say_and_hear(panel, "find kiwis", "match") == "No match for kiwis"
    assert panel.text_content("#page-state") == "page: shows the result of “find kiwis”"


def test_scroll_by_spoken_numbers_and_powers_of_two(browser: Browser, site: str) -> None:
    shop = browser.open(f"{site}/shop")
    panel = browser.panel()
    panel.click("#listen")
    shop.bring_to_front()

    def scrolled_by(command: str) -> int:
        y = int(shop.evaluate("scrollY"))
        run_command(panel, command)
        return int(shop.evaluate("scrollY")) - y

    assert scrolled_by("scroll down two to the power of four") == 16 * 40  # lines of 40 px
    assert scrolled_by("scroll down twelve") == 12 * 40
    assert scrolled_by("scroll down minus two to the third") == -8 * 40
    assert scrolled_by("scroll up three") == -3 * 40
    run_command(panel, "scroll to the bottom")
    assert shop.evaluate("scrollY + innerHeight") == shop.evaluate(
        "document.documentElement.scrollHeight"
    )
    run_command(panel, "scroll to the top")
    assert shop.evaluate("scrollY") == 0


def test_mute_listen_and_unknown_commands(browser: Browser, site: str) -> None:
    shop = browser.open(f"{site}/shop")
    panel = browser.panel()
    panel.click("#listen")
    shop.bring_to_front()

    assert say_and_hear(panel, "listen", "media") == (
        "2 media: 1, audio Morning song; 2, video Intro film. Say play and a number."
    )
    say_and_hear(panel, "mute", "Muted")
    shop_id = tab_id(panel, f"{site}/shop")
    assert panel.evaluate("id => chrome.tabs.get(id).then(t => t.mutedInfo.muted)", shop_id)
    say_and_hear(panel, "unmute", "Unmuted")
    assert not panel.evaluate("id => chrome.tabs.get(id).then(t => t.mutedInfo.muted)", shop_id)

    assert say_and_hear(panel, "fly me to the moon", "understood") == "Not understood"
    [entry] = storage(panel, "local", "commandLog")
    assert entry["kind"] == "not understood" and entry["text"] == "fly me to the moon"
    assert panel.text_content("#log") == "not understood: fly me to the moon"


def test_panel_settings_bindings_and_help(browser: Browser) -> None:
    panel = browser.panel()
    panel.fill("#settings [name=server]", "http://127.0.0.1:9999/v1/")
    panel.fill("#settings [name=apiKey]", "sk-test")
    panel.fill("#settings [name=userId]", "ada")
    panel.select_option("#settings [name=midiInput]", "fake-keys")
    panel.click("#settings button[type=submit]")
    panel.wait_for_selector("#settings-status:text('saved')")
    saved = storage(panel, "sync", "settings")
    assert saved["server"] == "http://127.0.0.1:9999"  # /v1 and slashes dropped
    assert (saved["apiKey"], saved["userId"], saved["midiInput"]) == ("sk-test", "ada", "fake-keys")

    panel.fill("#settings [name=server]", "ftp://nowhere")
    panel.click("#settings button[type=submit]")
    panel.wait_for_selector("#settings-status:text('is not an http(s) URL')")

    # The help's picture: 25 keys (15 white, 10 black), each with its action.
    assert panel.locator("#keyboard svg g[data-note]").count() == 25
    assert panel.locator("#keyboard svg g[data-note] title").first.text_content() == (
        "C3 (48): start a chord (with 2+ more keys within 2 s) naming or switching tabs"
    )
    assert panel.locator("#bindings select[name=note-60]").is_disabled()
    panel.select_option("#bindings select[name=note-72]", "layout")
    eventually(
        panel, lambda: (storage(panel, "sync", "bindings") or {}).get("72") == "layout", "binding"
    )
    assert (
        "72): hear the visible page once"
        in panel.locator("#keyboard svg g[data-note='72'] title").text_content()
    )


def test_layout_feedback_follows_scrolling_and_links_are_moved_through(
    browser: Browser, site: str
) -> None:
    links = browser.open(f"{site}/links")
    panel = browser.panel()
    panel.click("#listen")
    links.bring_to_front()

    def heard() -> int:
        return int(panel.evaluate("window.__fake.oscillators"))

    assert heard() == 0
    say_and_hear(panel, "start feedback", "Feedback on")
    panel.wait_for_function("() => window.__fake.oscillators === 25")  # one string voice a cell
    links.evaluate("scrollBy(0, 300)")  # the user scrolls: the layout plays again
    panel.wait_for_function("() => window.__fake.oscillators > 25")
    say_and_hear(panel, "stop feedback", "Feedback off")
    after = heard()
    links.evaluate("scrollBy(0, -300)")
    panel.wait_for_timeout(700)  # past the page's 250 ms debounce
    assert heard() == after

    assert say_and_hear(panel, "move to three", "Link") == "Link 3 of 100: a"
    assert say_and_hear(panel, "move next two", "Link") == "Link 5 of 100: a"
    assert say_and_hear(panel, "move back", "Link") == "Link 4 of 100: a"
    say_and_hear(panel, "open", "Opening a")
    links.wait_for_url(f"{site}/links#l")


def test_play_a_listed_medium_and_go_back_and_forward(browser: Browser, site: str) -> None:
    shop = browser.open(f"{site}/news")
    shop.goto(f"{site}/shop")  # the tab's history: the news, then the shop
    panel = browser.panel()
    panel.click("#listen")
    shop.bring_to_front()

    def paused() -> list[bool]:
        media = "[...document.querySelectorAll('audio, video')]"
        return list(shop.evaluate(f"{media}.map(m => m.paused)"))

    say_and_hear(panel, "listen", "media")
    assert paused() == [True, True]
    assert say_and_hear(panel, "play one", "Playing") == "Playing Morning song"
    eventually(panel, lambda: paused() == [False, True], "the audio playing")
    assert say_and_hear(panel, "play number two", "Sorry") == (
        "Sorry, the video Intro film has no source to play"
    )
    assert say_and_hear(panel, "play three", "Sorry") == (
        "Sorry, there is no medium 3; say listen to hear the list"
    )

    before, logged = len(spoken(panel)), len(storage(panel, "local", "commandLog"))
    run_command(panel, "go back")
    shop.wait_for_url(f"{site}/news")
    midi(panel, [0x90, 57, 100], [0x80, 57, 0])  # A3: forward
    shop.wait_for_url(f"{site}/shop")
    run_command(panel, "go back")
    shop.wait_for_url(f"{site}/news")
    run_command(panel, "go forward")
    shop.wait_for_url(f"{site}/shop")
    assert spoken(panel)[before:] == []  # nothing went wrong (an error is said and logged)
    assert len(storage(panel, "local", "commandLog")) == logged


def test_push_to_talk_hears_one_command(browser: Browser, site: str) -> None:
    shop = browser.open(f"{site}/shop")
    panel = browser.panel()
    shop.bring_to_front()

    def recognizers() -> int:
        return int(panel.evaluate("window.__fake.recognitions.size"))

    assert recognizers() == 0  # not listening: nothing hears
    midi(panel, [0x90, 60, 100], [0x80, 60, 0])  # middle C
    assert say_and_hear(panel, "find apples", "match") == "3 matches: 3 for apples"
    eventually(panel, lambda: recognizers() == 0, "recognition stopping after one command")
    assert browser.icon() == ("off", "")

    # While listening, the phrase pushed for runs once (not also as a heard command).
    panel.click("#listen")
    midi(panel, [0x90, 60, 100], [0x80, 60, 0])
    before = say(panel, "find pears")
    wait_spoken(panel, lambda s: "match" in s, before)
    panel.wait_for_timeout(300)
    assert spoken(panel)[before:] == ["2 matches: 2 for pears"]
    assert recognizers() == 1  # still listening


def test_only_the_midi_input_chosen_in_the_settings_is_heard(browser: Browser) -> None:
    panel = browser.panel()
    options = panel.locator("#settings [name=midiInput] option")
    assert options.all_text_contents() == ["all inputs", "Fake Keys", "Fake Pads"]
    g_sharp = [[0x90, 68, 100], [0x80, 68, 0]]  # G#4: start or pause recording

    # Every input by default.
    before = len(spoken(panel))
    midi(panel, *g_sharp, source="fake-pads")
    midi(panel, *g_sharp)
    wait_spoken(panel, lambda s: s == "Recording paused", before)
    assert spoken(panel)[before:] == ["Recording", "Recording paused"]

    panel.select_option("#settings [name=midiInput]", "fake-pads")
    panel.click("#settings button[type=submit]")
    panel.wait_for_selector("#settings-status:text('saved')")
    assert storage(panel, "sync", "settings")["midiInput"] == "fake-pads"

    def only_pads_heard() -> None:
        before = len(spoken(panel))
        midi(panel, *g_sharp)  # Fake Keys: ignored, so the pads' key starts recording
        midi(panel, *g_sharp, source="fake-pads")
        wait_spoken(panel, lambda s: s.startswith("Recording"), before)
        panel.wait_for_timeout(200)
        assert spoken(panel)[before:] == ["Recording"]
        events = panel.evaluate("window.handsfree.session.eventCount")
        midi(panel, [0x90, 50, 100], [0x80, 50, 0])  # not recorded either
        assert panel.evaluate("window.handsfree.session.eventCount") == events
        midi(panel, *g_sharp, source="fake-pads")  # pause again
        wait_spoken(panel, lambda s: s == "Recording paused", before)

    only_pads_heard()
    # The choice holds in a panel opened later.
    panel.reload()
    panel.wait_for_selector("body[data-ready=true]")
    assert panel.input_value("#settings [name=midiInput]") == "fake-pads"
    only_pads_heard()
