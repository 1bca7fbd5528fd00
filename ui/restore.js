// A PNG dropped into (or picked for) the message box restores its settings at once, as the box's placeholder
// promises: when an upload adds a file to the box and no text is typed, the box's own submit button is pressed
// (the chat's send restores dropped PNGs; with text, the user sends it when ready). ui/layout.py passes this,
// with follow.js, to launch(js=...). Only the box is watched, not the whole page (a chat redraw is hundreds of
// mutations).
() => {
  let files = 0;
  const look = (box) => {
    const now = box.querySelectorAll('.thumbnail-item').length;  // a finished upload's thumbnail
    const text = (box.querySelector('textarea') || {}).value || '';
    if (now > files && !text.trim()) {
      const send = box.querySelector('button.submit-button');
      if (send && !send.disabled) send.click();
    }
    files = now;
  };
  const watch = setInterval(() => {
    const box = document.querySelector('#prompt');
    if (!box) return;
    clearInterval(watch);
    new MutationObserver(() => look(box)).observe(box, {childList: true, subtree: true});
  }, 200);
}
