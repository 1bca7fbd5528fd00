// The chat follows new replies unless the user is reading older ones: then a "New reply" button appears and
// jumps down. Sending (Enter, a chat action button) follows again. ui/layout.py passes this to launch(js=...).
() => {
  const NEAR_PX = 60;  // this close to the bottom counts as "at the newest reply"
  const ARROW = '<svg width="12" height="12" viewBox="0 0 12 12" aria-hidden="true"><path d="M6 2v7M2.5 6 6 9.5 9.5 6"' +
                ' fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round"/></svg>';
  // `pinned`: where this script last put the chat (its bottom). Content growing leaves scrollTop there; the user
  // scrolling up moves it above, which a mutation can see before the scroll event arrives (streamed replies)
  let following = true, pinned = 0, seen = 0, button = null, watched = null;
  const log = () => document.querySelector('#chat [role=log]');
  const count = () => document.querySelectorAll('#chat .message-row .message').length;  // texts and images
  const atBottom = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_PX;

  const scrolledUp = (el) => !atBottom(el) && el.scrollTop < pinned - 4;
  function pin(el) {
    el.scrollTop = el.scrollHeight;
    pinned = el.scrollTop;
  }
  function toBottom() {
    const el = log();
    if (el) pin(el);
    following = true;
    seen = count();
    if (button) button.classList.remove('shown');
  }
  function ensureButton() {
    const chat = document.querySelector('#chat');
    if (!chat || (button && chat.contains(button))) return;
    button = document.createElement('button');
    button.id = 'new-reply';
    button.type = 'button';
    button.innerHTML = ARROW + '<span>New reply</span>';
    button.addEventListener('click', toBottom);
    chat.appendChild(button);
  }
  function changed() {
    ensureButton();
    const el = log();
    if (!el) return;
    if (el !== watched) {  // gradio may replace the scrolling element (the placeholder, a cleared chat)
      watched = el;
      pinned = el.scrollTop;
      el.addEventListener('scroll', () => {
        if (atBottom(el)) {
          following = true;
          pinned = el.scrollTop;
          if (button) button.classList.remove('shown');
        } else if (scrolledUp(el)) {
          following = false;
        }
      });
    }
    if (following && scrolledUp(el)) following = false;
    if (following) {
      pin(el);
      seen = count();
    } else if (count() > seen && button) {
      button.classList.add('shown');
    }
  }
  // once a frame at most: a redraw of the chat is hundreds of mutations, and each look at the scroll position
  // makes the browser lay the page out again (that was ~50 ms of CPU a reply, beside the sampling)
  let queued = false;
  const soon = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; changed(); });
  };
  new MutationObserver(soon).observe(document.body, {childList: true, subtree: true});
  document.addEventListener('load', (e) => {  // an image that loads grows the chat
    if (e.target.tagName === 'IMG' && following && e.target.closest('#chat')) soon();
  }, true);
  // the user asks for a new reply: follow it, wherever they were reading
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && e.target.closest && e.target.closest('#prompt')) toBottom();
  }, true);
  document.addEventListener('click', (e) => {
    const asks = '#prompt button.submit-button, #reroll, #vary, #reuse, #use-control, #edit-inpaint, #edit-zoom, ' +
                 '#edit-upscale, [id^=edit-pan-]';
    if (e.target.closest && e.target.closest(asks)) toBottom();
  }, true);
}
