"""The participant page's look in the browser: its CSS and the one script that runs on load (PAGE_JS).

Desktop (wider than NARROW_PX): the panes side by side, as they always were. A narrow screen (a phone) gets
one pane at a time: a tab per pane (built in the browser from the panes present on the page, so two or
three) that marks a pane with a reply not yet seen, the shown pane sized so that the tabs, the pane with its
own box and the "send to all" box fill the screen exactly, and, whenever a message is sent, the page brought
back to that view (the tabs at the top, the send box at the bottom, the newest reply in between). The
"send to all" row stays in view at the bottom (sticky) when the participant scrolls up.

The crisis resources (issue 28): when the banner is shown (a risky message in this conversation) the page
opens a modal dialog (role "alertdialog": screen readers announce it, focus moves into it) with the same
text, which the participant acknowledges; a "Support resources" button next to the send box opens it again
for the rest of the conversation. The banner at the top stays as before.

The pane's label chip ("Model A") sits in the pane's header rather than floating over the first visible
line of a scrolled pane.

Nothing here ever reads or sends participant text: the script counts messages and reads the pane labels and
the banner, which the page itself rendered.
"""

from __future__ import annotations

NARROW_PX = 820  # phones and narrow tablets: below three 260 px columns side by side

CSS = """
.extes-crisis {border: 2px solid #b91c1c; background: #fef2f2; padding: 0.8em; border-radius: 8px;}
.extes-code {font-size: 1.1em;}
/* Clearing a pane would only hide the history locally and invite confusion: not offered. */
.extes-chat button[title="Clear"], .extes-chat button[aria-label="Clear"] {display: none !important;}
/* The pane's label in its header, not floating over the messages (issue 28, item 7). */
.extes-chat [data-testid="block-label"] {position: static !important; align-self: flex-start;
  margin: 0 0 4px 0; box-shadow: none;}
/* The "send to all" row (with "Support resources" after a risky message) stays in view at the bottom. */
#extes-composer {position: sticky; bottom: 0; z-index: 20; background: var(--body-background-fill);
  padding: 6px 0 4px 0;}
/* Gradio's container hides overflow, which makes it the scroll box of every sticky element inside and so
   turns "sticky" off; "clip" cuts the same overflow without that. */
.gradio-container {overflow: clip !important;}
/* Tabs exist for narrow screens only. */
#extes-tabs {display: none;}
#extes-support:has(#extes-support-btn[hidden]) {display: none !important;}
.extes-support {border: 2px solid #b91c1c; color: #b91c1c; background: #fff; border-radius: 8px;
  padding: 6px 12px; font-weight: 600; cursor: pointer; min-height: 40px; white-space: nowrap;}
/* Counters of two lines and of one keep the panes' tops level. */
.extes-pane > [id^="counter-"] {min-height: 3.2em;}
#extes-crisis-dialog {box-sizing: border-box; width: min(560px, 92vw); margin: auto; max-height: 86vh; overflow: auto; border: 2px solid #b91c1c;
  border-radius: 10px; padding: 1em 1.2em; background: #fef2f2; color: #1f2937;}
#extes-crisis-dialog::backdrop {background: rgba(0, 0, 0, 0.45);}
#extes-crisis-dialog h2 {margin: 0 0 0.5em 0; font-size: 1.2em; color: #b91c1c;}
#extes-crisis-dialog ul {padding-left: 1.2em;}
#extes-crisis-dialog a {color: #1d4ed8; text-decoration: underline;}
#extes-crisis-ack {margin-top: 0.8em; width: 100%; min-height: 44px; border-radius: 8px; border: none;
  background: #b91c1c; color: #fff; font-weight: 600; font-size: 1em; cursor: pointer;}
/* Gradio copies these rules under ".gradio-container .contain" (and leaves the top-level ones as written too):
   the dialog, which lives outside the app, is styled by the copies as written, so it stays at top level. */
@media (max-width: __NARROW__px) {
  #extes-tabs {display: block;}
  .extes-tablist {display: flex; gap: 6px; padding: 4px 0;}
  .extes-tablist [role="tab"] {flex: 1; min-height: 44px; border-radius: 8px; font-weight: 600;
    border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary);
    color: var(--body-text-color); cursor: pointer; position: relative;}
  /* not the theme's primary orange: white on it is below WCAG AA contrast (axe); this is 7:1 */
  .extes-tablist [role="tab"][aria-selected="true"] {background: #9a3412; color: #fff; border-color: #9a3412;}
  .extes-dot {display: inline-block; width: 10px; height: 10px; border-radius: 50%; background: #dc2626;
    margin-left: 6px; vertical-align: middle; border: 2px solid #fff;}
  .extes-pane.extes-off {display: none !important;}
  .extes-pane .extes-chat {height: var(--extes-chat-h, 55vh) !important;}
  #extes-composer {flex-wrap: nowrap !important; align-items: flex-end;}
  #extes-composer > * {min-width: 0 !important;}
  #extes-composer button {min-height: 44px; white-space: nowrap; flex: 0 0 auto !important;
    width: auto !important; padding: 0 14px;}
  .extes-pane > [id^="counter-"] {min-height: 0;}
  .extes-support, #extes-support div {width: 100%;}
  /* the page's top on a phone: a title that fits, the note on the browser above its button, not beside it */
  .prose h1 {font-size: 1.5em !important; line-height: 1.25 !important;}
  .row:has(> #browser-note) {flex-direction: column !important; align-items: flex-start; gap: 6px;}
  #browser-note {font-size: 0.9em;}
  #extes-composer [data-testid="block-info"] {font-size: 0.85em; line-height: 1.25;}
  #extes-composer:has(#extes-support-btn:not([hidden])) {flex-wrap: wrap !important;}
  #extes-support {flex-basis: 100% !important;}
}
""".replace("__NARROW__", str(NARROW_PX))

# Runs once on page load (Blocks.load with js=). Everything is driven from the DOM the page already has, on
# every change of it (a MutationObserver, at most once per animation frame), so it follows Gradio's own
# re-rendering instead of racing it.
PAGE_JS = """() => {
  if (window.extesPage) { return; }
  const NARROW = window.matchMedia('(max-width: __NARROW__px)');
  const S = {shown: null, seen: {}, users: -1, crisis: false, back: null, chatOn: false, pinUntil: 0, expectY: 0};
  const PIN_MS = 3000;
  window.extesPage = S;
  const set = (el, name, value) => {
    if (value === null) { if (el.hasAttribute(name)) { el.removeAttribute(name); } }
    else if (el.getAttribute(name) !== value) { el.setAttribute(name, value); }
  };
  const visible = (el) => !!el && el.getClientRects().length > 0;
  const panes = () => [...document.querySelectorAll('.extes-pane')].filter((p) => p.id && p.querySelector('.extes-chat'));
  const label = (p) => {
    const l = p.querySelector('.extes-chat [data-testid="block-label"]');
    return (l && l.textContent.trim()) || p.id;
  };
  const count = (p, who) => p.querySelectorAll('[data-testid="' + who + '"]').length;
  const toEnd = (p) => {
    const log = p && p.querySelector('.bubble-wrap');
    if (log) { log.scrollTop = log.scrollHeight; }
  };
  function tabs(list) {
    const bar = document.getElementById('extes-tabs');
    if (!bar) { return null; }
    const key = list.map((p) => p.id + ':' + label(p)).join(',');
    let tl = bar.querySelector('.extes-tablist');
    if (tl && tl.dataset.key === key) { return tl; }
    if (tl) { tl.remove(); }
    tl = document.createElement('div');
    tl.className = 'extes-tablist';
    tl.dataset.key = key;
    tl.setAttribute('role', 'tablist');
    tl.setAttribute('aria-label', 'Models');
    for (const p of list) {
      const b = document.createElement('button');
      b.type = 'button';
      b.id = 'tab-' + p.id;
      b.dataset.pane = p.id;
      b.setAttribute('role', 'tab');
      b.setAttribute('aria-controls', p.id);
      const name = document.createElement('span');
      name.textContent = label(p);
      const mark = document.createElement('span');
      mark.className = 'extes-new';
      mark.hidden = true;
      mark.innerHTML = '<span class="extes-dot" aria-hidden="true"></span>';
      b.append(name, mark);
      b.addEventListener('click', () => show(p.id));
      b.addEventListener('keydown', (e) => {
        const ids = panes().map((q) => q.id);
        const step = {ArrowRight: 1, ArrowLeft: -1}[e.key];
        if (!step) { return; }
        e.preventDefault();
        const next = ids[(ids.indexOf(p.id) + step + ids.length) % ids.length];
        show(next);
        const t = document.getElementById('tab-' + next);
        if (t) { t.focus(); }
      });
      tl.appendChild(b);
    }
    bar.appendChild(tl);
    return tl;
  }
  function show(id) {
    S.shown = id;
    sync();
    toEnd(document.getElementById(id));
  }
  // The view a phone keeps while chatting: the tabs at the top of the screen, the send row at the bottom.
  // Measured from the panes. Kept for PIN_MS after a send, as the page above
  // may still change (the crisis banner appears with the first reply), unless the participant scrolls.
  function align() {
    const bar = document.getElementById('extes-tabs');
    const p = document.getElementById(S.shown);
    if (!bar || !visible(bar) || !p) { return; }
    const gap = parseFloat(getComputedStyle(bar.parentElement).rowGap) || 0;
    const off = p.parentElement.getBoundingClientRect().top - bar.offsetHeight - gap;
    S.expectY = Math.max(0, Math.round(window.scrollY + off));
    if (Math.abs(off) > 1) { window.scrollTo(0, S.expectY); }
  }
  function size(list) {
    const p = document.getElementById(S.shown);
    const chat = p && p.querySelector('.extes-chat');
    const bar = document.getElementById('extes-tabs');
    const row = p && p.parentElement;
    const comp = document.getElementById('extes-composer');
    if (!chat || !visible(chat) || !bar || !comp || !row) { return false; }
    const gap = parseFloat(getComputedStyle(bar.parentElement).rowGap) || 0;
    // natural heights (offsetHeight), not positions: the send row may be stuck to the bottom of the screen
    const used = bar.offsetHeight + gap + row.offsetHeight + gap + comp.offsetHeight;
    const now = chat.offsetHeight;
    const h = Math.max(200, Math.floor(now + window.innerHeight - used - 2));
    if (Math.abs(h - now) < 2) { return false; }
    document.documentElement.style.setProperty('--extes-chat-h', h + 'px');
    return true;
  }
  function dialog() {
    let d = document.getElementById('extes-crisis-dialog');
    if (d) { return d; }
    d = document.createElement('dialog');
    d.id = 'extes-crisis-dialog';
    d.setAttribute('role', 'alertdialog');
    d.setAttribute('aria-modal', 'true');
    d.setAttribute('aria-labelledby', 'extes-crisis-title');
    d.setAttribute('aria-describedby', 'extes-crisis-text');
    d.innerHTML = '<h2 id="extes-crisis-title">Help is available now</h2><div id="extes-crisis-text"></div>'
      + '<button type="button" id="extes-crisis-ack">I have read this</button>';
    d.querySelector('#extes-crisis-ack').addEventListener('click', () => d.close());
    d.addEventListener('close', () => {
      const back = S.back && S.back.isConnected && visible(S.back) ? S.back : document.getElementById('extes-support-btn');
      if (back) { back.focus(); }
    });
    document.body.appendChild(d);
    return d;
  }
  function openCrisis() {
    const banner = document.getElementById('crisis-banner');
    if (!banner) { return; }
    const d = dialog();
    const text = banner.querySelector('.md') || banner;
    d.querySelector('#extes-crisis-text').replaceChildren(...[...text.childNodes].map((n) => n.cloneNode(true)));
    if (!d.open) { S.back = document.activeElement; d.showModal(); }
    d.querySelector('#extes-crisis-ack').focus();
  }
  function crisis() {
    const banner = document.getElementById('crisis-banner');
    const on = visible(banner) && banner.textContent.trim() !== '';
    const btn = document.getElementById('extes-support-btn');
    if (btn && btn.hidden === on) { btn.hidden = !on; }
    if (on && !S.crisis) { S.crisis = true; openCrisis(); }
    else if (!on && S.crisis) {
      S.crisis = false;
      const d = document.getElementById('extes-crisis-dialog');
      if (d && d.open) { d.close(); }
    }
  }
  function sync() {
    crisis();
    const list = panes();
    const chatOn = list.some((p) => p.offsetParent !== null || visible(p));
    if (!list.length) { return; }
    const narrow = NARROW.matches;
    if (!list.some((p) => p.id === S.shown)) { S.shown = list[0].id; }
    const tl = tabs(list);
    let users = 0;
    for (const p of list) {
      const on = !narrow || p.id === S.shown;
      p.classList.toggle('extes-off', !on);
      set(p, 'role', narrow ? 'tabpanel' : null);
      set(p, 'aria-labelledby', narrow ? 'tab-' + p.id : null);
      const bots = count(p, 'bot');
      users += count(p, 'user');
      if (on) { S.seen[p.id] = bots; }
      const unread = bots > (S.seen[p.id] || 0);
      const b = tl && tl.querySelector('[data-pane="' + p.id + '"]');
      if (b) {
        set(b, 'aria-selected', String(p.id === S.shown));
        set(b, 'tabindex', p.id === S.shown ? '0' : '-1');
        const mark = b.querySelector('.extes-new');
        if (mark.hidden === unread) { mark.hidden = !unread; }
        set(b, 'aria-label', label(p) + (unread ? ', new reply' : ''));
      }
    }
    const sent = users > S.users && S.users >= 0;
    const entered = chatOn && !S.chatOn;
    S.users = users;
    S.chatOn = chatOn;
    if (!narrow || !chatOn) { S.pinUntil = 0; return; }
    const resized = size(list);
    if (sent || entered) { S.pinUntil = Date.now() + PIN_MS; }
    if (Date.now() < S.pinUntil) { align(); }
    if (sent || entered || resized) { toEnd(document.getElementById(S.shown)); }
  }
  let queued = false;
  const later = () => {
    if (queued) { return; }
    queued = true;
    requestAnimationFrame(() => { queued = false; sync(); });
  };
  new MutationObserver(later).observe(document.body, {childList: true, subtree: true, characterData: true,
                                                      attributes: true, attributeFilter: ['class', 'style', 'hidden']});
  window.addEventListener('resize', later);
  const unpin = () => { S.pinUntil = 0; };
  for (const ev of ['wheel', 'touchmove']) { window.addEventListener(ev, unpin, {passive: true}); }
  // any scroll the page did not make itself (keyboard focus moving to the rating form, a link, ...) too
  window.addEventListener('scroll', () => { if (Math.abs(window.scrollY - S.expectY) > 2) { unpin(); } },
                          {passive: true});
  window.addEventListener('keydown', (e) => {
    if (['PageUp', 'PageDown', 'Home', 'End', 'ArrowUp', 'ArrowDown', ' '].includes(e.key)
        && !(e.target.closest && e.target.closest('textarea, input'))) { unpin(); }
  });
  NARROW.addEventListener('change', later);
  document.addEventListener('click', (e) => {
    if (e.target.closest && e.target.closest('#extes-support-btn')) { openCrisis(); }
  });
  sync();
}""".replace("__NARROW__", str(NARROW_PX))

SUPPORT_HTML = ('<button type="button" id="extes-support-btn" class="extes-support" hidden>'
                "Support resources</button>")
