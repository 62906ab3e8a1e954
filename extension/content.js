// The content script: answers the panel's requests about the page (find, scroll, layout,
// media) and tells it when the page moved, for layout feedback. The work is in lib/ modules.
(() => {
  const load = (path) => import(chrome.runtime.getURL(path));
  const modules = Promise.all([load("lib/page.js"), load("lib/layout.js")]);

  async function answer(message) {
    const [page, layout] = await modules;
    switch (message.action) {
      case "find":
        return page.find(document, window, message.phrases);
      case "scroll":
        return page.scroll(window, message);
      case "move":
        return page.move(document, message);
      case "open":
        return { text: page.openFocused(document) };
      case "back":
        history.back();
        return {};
      case "forward":
        history.forward();
        return {};
      case "media":
        return { media: page.listMedia(document) };
      case "play":
        return { label: await page.playMedia(document, message.index) };
      case "layout":
        return layout.scanLayout(document, window);
      default:
        throw new Error(`the page does not know the action ${message.action}`);
    }
  }

  chrome.runtime.onMessage.addListener((message, _sender, sendResponse) => {
    if (message?.target !== "page") return false;
    answer(message).then(sendResponse, (error) => sendResponse({ error: error.message }));
    return true; // answers asynchronously
  });

  let timer = 0;
  addEventListener("scroll", () => {
    clearTimeout(timer);
    timer = setTimeout(() => chrome.runtime.sendMessage({ type: "page-moved" }).catch(() => {}), 250);
  }, { passive: true });
})();
