"""The page's CSS: a compact header with the balance badge, notices, cards, and a layout that
stacks on narrow screens. Kept as one string so the mount can pass it to Gradio.

The Chat tab is a column as tall as the screen below the header and the tabs (`100dvh`, so a
phone's browser bars are taken into account): the chat log (`#chatbot`) grows and shrinks to
fill what the toolbar, a notice, the composer and the price line leave, so the message box and
Send/Stop never leave the screen. `--lc-chat-top` is the height above that column, per screen
size."""

from __future__ import annotations

from web.ui.text import UNAVAILABLE_MARKER

PAGE_CSS = """
#lc-header { align-items: center; gap: 12px; padding: 4px 0 8px;
  border-bottom: 1px solid var(--border-color-primary); margin-bottom: 8px; }
#lc-brand h2 { margin: 0; font-weight: 700; letter-spacing: -0.02em; }
#lc-user { text-align: right; }
#lc-account-bar { flex-wrap: nowrap; justify-content: flex-end; align-items: center; gap: 10px; }
#lc-account-bar > * { flex: 0 0 auto !important; min-width: 0 !important; width: auto !important; }
#lc-user { flex: 0 1 auto !important; }
#lc-user p { margin: 0; white-space: nowrap; }
.lc-balance { display: inline-flex; gap: 6px; align-items: baseline; white-space: nowrap;
  padding: 6px 12px; border-radius: 999px; background: var(--color-accent-soft);
  border: 1px solid var(--border-color-accent); font-size: 0.95rem; }
.lc-balance-label { opacity: 0.7; }
.lc-balance-amount { font-weight: 700; font-variant-numeric: tabular-nums; }
.lc-held { opacity: 0.7; font-size: 0.85em; }
#lc-signin { max-width: 440px; margin: 32px auto; }
.lc-notice { padding: 8px 12px; border-radius: 8px; margin: 4px 0; font-size: 0.92rem;
  border: 1px solid transparent; }
.lc-notice-info { background: #eef2ff; border-color: #c7d2fe; color: #312e81; }
.lc-notice-success { background: #ecfdf5; border-color: #a7f3d0; color: #065f46; }
.lc-notice-warning { background: #fffbeb; border-color: #fde68a; color: #92400e; }
.lc-notice-error { background: #fef2f2; border-color: #fecaca; color: #991b1b; }
.lc-cards { display: flex; gap: 12px; flex-wrap: wrap; }
.lc-card { flex: 1 1 140px; padding: 12px 16px; border-radius: 12px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); }
.lc-card-label { font-size: 0.8rem; text-transform: uppercase; opacity: 0.7; }
.lc-card-value { font-size: 1.6rem; font-weight: 700; font-variant-numeric: tabular-nums; }
.lc-available .lc-card-value { color: var(--color-accent); }
.lc-violations { margin: 8px 0; padding-left: 20px; }
.lc-violation { background: #fef2f2; color: #991b1b; border-left: 4px solid #dc2626;
  padding: 4px 8px; margin: 4px 0; list-style: none; font-family: var(--font-mono); }
.lc-audit-table th { text-align: left; padding-right: 16px; }
#lc-app { --lc-chat-top: 174px; }
#lc-chat-main { height: calc(100dvh - var(--lc-chat-top)); min-height: 360px;
  flex-wrap: nowrap !important; gap: 8px; }
#lc-chat-main > * { flex-shrink: 0; }
#chatbot { flex: 1 1 0 !important; height: auto !important; min-height: 140px; }
#chat-notice:not(:has(.lc-notice)), #conversation-notice:not(:has(.lc-notice)),
#model-loading:not(:has(.lc-notice)) { display: none !important; }
#chat-notice .lc-notice, #model-loading .lc-notice { margin: 0; }
#lc-alert-bar:not(:has(.lc-notice)) { display: none !important; }
#lc-alert-bar { flex-wrap: nowrap !important; gap: 8px; align-items: center; }
#lc-alert-bar .lc-notice { margin: 2px 0; }
#lc-alert-dismiss { flex: 0 0 auto !important; }
#lc-chat-toolbar { flex-wrap: nowrap; gap: 8px; align-items: stretch; }
#lc-chat-toolbar > #model-select { flex: 1 1 0 !important; min-width: 0 !important; }
#new-chat { white-space: nowrap; flex: 0 0 auto !important; }
#lc-composer { flex-wrap: nowrap; gap: 8px; align-items: stretch; }
#lc-composer button { align-self: stretch; }
#model-price, #model-price * { font-size: 0.8rem !important; line-height: 1.3 !important; }
#model-price { opacity: 0.8; }
#model-price p { margin: 0; }
/* The Chatbot's trash button only blanks the screen (the stored conversation and its context
   stay): New chat is the honest control, so the trash is not offered. */
#chatbot button[aria-label="Clear"] { display: none !important; }
#chatbot .message-wrap em:last-child { opacity: 0.75; font-size: 0.85em; }
#chatbot .message-wrap a[href^="/api/receipts/"] { opacity: 0.75; font-size: 0.85em; }
#model-select .lc-option-disabled { opacity: 0.45; cursor: not-allowed; pointer-events: none; }
@media (max-width: 720px) {
  #lc-header { flex-wrap: nowrap !important; gap: 8px; padding: 0 0 4px 28px;
    margin-bottom: 4px; align-items: center; }
  #lc-header > * { min-width: 0 !important; }
  #lc-brand { flex: 0 0 auto !important; width: auto !important; }
  #lc-brand h2 { font-size: 1.1rem; }
  #lc-account-bar { flex: 1 1 auto !important; flex-wrap: wrap !important; gap: 2px 6px;
    justify-content: flex-end; align-items: center; }
  #lc-account-bar > * { flex: 0 0 auto !important; min-width: 0 !important;
    width: auto !important; }
  #lc-user { order: 3; flex-basis: 100% !important; text-align: right; font-size: 0.8rem; }
  #lc-user p { margin: 0; white-space: normal; }
  .lc-balance-label { display: none; }
  .lc-balance { padding: 2px 8px; font-size: 0.85rem; }
  #lc-app { --lc-chat-top: 160px; }
  #lc-chat-main { gap: 6px; min-height: 320px; }
  #model-price, #model-price * { font-size: 0.72rem !important; }
  #model-select input { font-size: 0.72rem; text-overflow: ellipsis; }
  #model-select .wrap { padding-left: 6px; padding-right: 6px; }
  #new-chat { padding: 0 8px; font-size: 0.85rem; min-width: 0 !important; }
  .lc-card-value { font-size: 1.2rem; }
}
"""

# The conversation drawer lives in the Chat tab, but Gradio pads the whole page for an open
# drawer whatever tab shows: on the Account and Admin tabs that left a blank 280 px column.
PAGE_CSS += """
.sidebar-parent:has(#chat-tab[style*="display: none"]) { padding-left: 0 !important; }
"""

# The account and admin pages' tables (prices, audit) and narrow-screen history.
PAGE_CSS += """
.lc-table-wrap { max-width: 100%; overflow-x: auto; }
.lc-prices, .lc-audit-table { border-collapse: collapse; width: 100%; font-size: 0.92rem; }
.lc-prices th, .lc-prices td, .lc-audit-table th, .lc-audit-table td { text-align: left;
  padding: 6px 10px; border-bottom: 1px solid var(--border-color-primary); vertical-align: top; }
.lc-model-id { font-family: var(--font-mono); font-size: 0.85em; opacity: 0.7; }
.lc-price-unavailable td { opacity: 0.6; }
.lc-audit h4 { margin: 12px 0 4px; }
.lc-audit-ok td:last-child { color: #065f46; }
tr.lc-audit-fail, tr.lc-violation { background: #fef2f2; color: #991b1b; font-weight: 600; }
tr.lc-violation td { font-family: var(--font-mono); font-weight: 400; }
.lc-prices, .lc-prices th, .lc-prices td, .lc-audit-table, .lc-audit-table th,
.lc-audit-table td { border-left: none !important; border-right: none !important; }
.lc-prices, .lc-audit-table { border-top: none !important; }
@media (max-width: 720px) {
  .lc-cards { gap: 6px; flex-wrap: nowrap; }
  .lc-card { flex: 1 1 0; min-width: 0; padding: 8px 10px; }
  #history-controls { display: grid !important; grid-template-columns: 1fr 1fr; gap: 6px; }
  #history-controls > * { min-width: 0 !important; }
  .lc-prices thead { display: none; }
  .lc-prices, .lc-prices tbody { display: block; border: none !important; }
  .lc-prices tr { display: block; padding: 6px 0; border: none !important;
    border-bottom: 1px solid var(--border-color-primary) !important; }
  .lc-prices td { display: block; border: none !important; padding: 2px 4px; }
  .lc-prices td:first-child { font-weight: 600; }
}
"""

# Gradio's dropdown cannot disable single options, so the page marks the options whose label
# says "unavailable" as disabled (greyed, not clickable, aria-disabled) as they are rendered.
# The server still refuses an unavailable model if one is chosen some other way.
PAGE_HEAD = """
<style>
/* Gradio scopes the page CSS under its container, so the container's own side padding (32 px,
   a sixth of a phone's width) can only be narrowed from here. */
@media (max-width: 720px) { .gradio-container .main.fillable { padding: 8px 10px !important; } }
</style>
<script>
(() => {
  const marker = "__MARKER__";
  const mark = () => document
    .querySelectorAll('#model-select [data-testid="dropdown-option"]')
    .forEach((option) => {
      if (option.textContent.includes(marker) && !option.classList.contains("lc-option-disabled")) {
        option.classList.add("lc-option-disabled");
        option.setAttribute("aria-disabled", "true");
      }
    });
  new MutationObserver(mark).observe(document.documentElement, { childList: true, subtree: true });
})();
</script>
""".replace("__MARKER__", UNAVAILABLE_MARKER)
