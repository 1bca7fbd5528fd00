"""How a chat reply or the status line marks what kind of answer it is: words, not emoji (an emoji glyph shows as
an empty box in a browser without an emoji font, as in a headless Chromium)."""

PROBLEM = "**Problem:**"  # something was refused or failed; the rest of the message says why and what to do
NOTE = "**Note:**"  # something worth knowing about the images just made
BUSY = "**Busy:**"  # the server's line is full
STOPPED = "**Stopped.**"  # the user stopped a generation
