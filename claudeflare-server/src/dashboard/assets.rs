//! The page's stylesheet and script, inline (no build step, nothing to fetch).

/// Light and dark themes, laptop and phone layouts, visible focus.
pub const CSS: &str = r#"
:root { --bg:#f6f7f9; --card:#fff; --fg:#1d2330; --muted:#5b6476; --line:#dde1e8; --accent:#d9591b; --accent-2:#7b8496;
  --ok:#17803d; --ok-bg:#e3f4e8; --warn:#9a5b00; --warn-bg:#fdf0d8; --bad:#b42318; --bad-bg:#fde7e5; --track:#e9ecf1; }
@media (prefers-color-scheme: dark) {
  :root { --bg:#12151b; --card:#1b2029; --fg:#e6e9ef; --muted:#a2abbb; --line:#2c3340; --accent:#ff8a4c; --accent-2:#8f99ab;
    --ok:#5fd88a; --ok-bg:#173325; --warn:#f3bd5b; --warn-bg:#3a2d12; --bad:#ff8b80; --bad-bg:#3d1c1a; --track:#2a303b; }
}
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; background:var(--bg); color:var(--fg); }
header.top { display:flex; flex-wrap:wrap; gap:.75rem 1.5rem; align-items:center; justify-content:space-between; padding:.9rem 1.5rem;
  background:var(--card); border-bottom:1px solid var(--line); position:sticky; top:0; z-index:2; }
h1 { font-size:1.25rem; margin:0; } .logo { color:var(--accent); }
h2 { font-size:1.05rem; margin:0 0 .75rem; }
main { max-width:1400px; margin:0 auto; padding:1.25rem 1.5rem 3rem; display:grid; gap:1.25rem; }
section { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:1rem 1.25rem; min-width:0; }
.controls { display:flex; flex-wrap:wrap; gap:.5rem; align-items:center; }
.advice { flex-basis:100%; margin:.25rem 0 0; max-width:60rem; font-size:.85rem; color:var(--warn); background:var(--warn-bg); padding:.4rem .6rem; border-radius:6px; }
.stats { display:grid; grid-template-columns:repeat(auto-fit,minmax(145px,1fr)); gap:.75rem; }
.stat { border:1px solid var(--line); border-radius:10px; padding:.7rem .9rem; }
.stat .label { color:var(--muted); font-size:.8rem; text-transform:uppercase; letter-spacing:.04em; }
.stat .value { font-size:1.6rem; font-weight:650; font-variant-numeric:tabular-nums; }
.stat .detail, .sub { color:var(--muted); font-size:.82rem; }
.stat.warn { border-color:var(--warn); background:var(--warn-bg); }
.scroll { overflow-x:auto; }
table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
caption { text-align:left; font-weight:600; padding-bottom:.4rem; }
th, td { text-align:left; padding:.45rem .6rem; border-bottom:1px solid var(--line); vertical-align:top; }
thead th { color:var(--muted); font-weight:600; font-size:.8rem; white-space:nowrap; }
tr.failed td { background:color-mix(in srgb, var(--bad-bg) 45%, transparent); }
.pill { display:inline-block; padding:.05rem .5rem; border-radius:999px; font-size:.8rem; font-weight:600; white-space:nowrap; }
.pill.ok { color:var(--ok); background:var(--ok-bg); } .pill.warn { color:var(--warn); background:var(--warn-bg); }
.pill.bad { color:var(--bad); background:var(--bad-bg); } .pill.muted { color:var(--muted); background:var(--track); }
.badge { display:inline-block; min-width:2.2rem; text-align:center; font-weight:700; color:var(--accent); border:1px solid var(--accent); border-radius:6px; padding:0 .3rem; margin-right:.35rem; }
code.command { font-size:.8rem; background:var(--track); padding:.1rem .35rem; border-radius:4px; }
.usage { display:grid; grid-template-columns:2.2rem 5rem 2.6rem; gap:.4rem; align-items:center; }
.model-cap .usage { grid-template-columns:minmax(2.2rem, 7.5rem) 5rem 2.6rem; }
.model-cap .usage > .sub:first-child { overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.reason { max-width:22rem; overflow-wrap:anywhere; }
svg.share { width:5rem; height:.55rem; }
svg .track { fill:var(--track); } svg .bar { fill:var(--accent); } svg .bar-alt { fill:var(--bad); }
svg .hit { fill:transparent; } svg .axis { stroke:var(--line); } svg .tick { fill:var(--muted); font-size:10px; }
.charts { display:grid; grid-template-columns:repeat(auto-fit,minmax(300px,1fr)); gap:1rem; margin-bottom:1rem; }
figure.chart { margin:0; } figure.chart svg { width:100%; height:150px; display:block; }
figcaption { font-weight:600; font-size:.9rem; margin-bottom:.3rem; }
.legend { margin:.2rem 0 0; font-size:.8rem; color:var(--muted); }
.swatch { display:inline-block; width:.7rem; height:.7rem; border-radius:2px; background:var(--accent); vertical-align:-1px; }
.swatch.alt { background:var(--bad); margin-left:.6rem; }
.breakdowns { display:grid; grid-template-columns:repeat(auto-fit,minmax(320px,1fr)); gap:1rem; }
.filters { display:flex; flex-wrap:wrap; gap:.5rem; align-items:center; margin-bottom:.6rem; }
select, button { font:inherit; color:var(--fg); background:var(--card); border:1px solid var(--line); border-radius:7px; padding:.3rem .6rem; min-height:2rem; }
button { cursor:pointer; font-weight:600; } button:hover { border-color:var(--accent); }
:focus-visible { outline:3px solid var(--accent); outline-offset:2px; }
.error-text { color:var(--bad); font-size:.85rem; max-width:28rem; overflow-wrap:anywhere; }
.empty { color:var(--muted); }
.visually-hidden { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); white-space:nowrap; }
#toast { position:fixed; bottom:1rem; right:1rem; max-width:min(28rem, calc(100vw - 2rem)); padding:.7rem 1rem; border-radius:10px;
  background:var(--fg); color:var(--bg); box-shadow:0 6px 24px rgb(0 0 0 / .25); opacity:0; transform:translateY(8px); transition:.2s; pointer-events:none; }
#toast.show { opacity:1; transform:none; } #toast.error { background:var(--bad); color:#fff; }
@media (max-width: 640px) { main { padding:.75rem; } section { padding:.8rem; } header.top { padding:.75rem; position:static; } .stats { grid-template-columns:1fr 1fr; } .stat .value { font-size:1.3rem; } }
"#;

/// Actions through the JSON API with visible feedback, live countdowns, and a refresh of the
/// sections every 5 s that leaves alone the one the user is working in.
pub const JS: &str = r#"
(() => {
  const sections = ['controls', 'overview', 'accounts', 'keys', 'analytics', 'history'];
  let busy = 0;
  const toast = (message, ok) => {
    const el = document.getElementById('toast');
    el.textContent = message;
    el.className = ok ? 'show' : 'show error';
    clearTimeout(el.timer);
    el.timer = setTimeout(() => { el.className = ''; }, ok ? 3000 : 6000);
  };
  const post = async (url, body) => {
    const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body || {}) });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || response.statusText);
    return answer;
  };
  const act = async (work, done) => {
    busy++;
    try { toast(done(await work()), true); } catch (error) { toast('Failed: ' + error.message, false); }
    finally { busy--; refresh(); }
  };
  document.addEventListener('change', (event) => {
    const target = event.target;
    if (target.id === 'strategy') {
      act(() => post('/api/config/strategy', { strategy: target.value }),
          (a) => 'Strategy is now ' + a.strategy + (a.warning ? '. Note: ' + a.warning : ''));
    } else if (target.dataset.tier) {
      act(() => post('/api/accounts/' + encodeURIComponent(target.dataset.tier) + '/tier', { tier: Number(target.value) }),
          (a) => a.name + ' is now tier ' + a.tier);
    }
  });
  document.addEventListener('click', (event) => {
    const revoke = event.target.closest('button[data-revoke]');
    if (revoke) {
      const name = revoke.dataset.revoke;
      if (!confirm('Revoke the key ' + name + '? Requests with it are refused from then on.')) return;
      revoke.disabled = true;
      act(() => post('/api/keys/' + encodeURIComponent(name) + '/revoke'), () => 'Key ' + name + ' revoked');
      return;
    }
    const approve = event.target.closest('button[data-approve]');
    if (approve) {
      const code = approve.dataset.approve;
      const select = document.querySelector('select[data-signin-key="' + code + '"]');
      let body = { key: select ? select.value : '' };
      if (!body.key) {
        const name = prompt('Name of the new key for sign-in ' + code + ':');
        if (!name) return;
        body = { new_key: name };
      }
      approve.disabled = true;
      act(() => post('/api/signins/' + encodeURIComponent(code) + '/approve', body), (a) => 'Sign-in ' + code + ' approved as ' + a.key);
      return;
    }
    const deny = event.target.closest('button[data-deny]');
    if (deny) {
      const code = deny.dataset.deny;
      deny.disabled = true;
      act(() => post('/api/signins/' + encodeURIComponent(code) + '/deny'), () => 'Sign-in ' + code + ' refused');
      return;
    }
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    button.disabled = true;
    const action = button.dataset.action;
    act(() => post('/api/accounts/' + encodeURIComponent(button.dataset.account) + '/' + action),
        (a) => a.name + (action === 'pause' ? ' paused' : ' resumed'));
  });
  const span = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000)), h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
    return h > 0 ? h + 'h ' + m + 'm' : m > 0 ? m + 'm ' + (s % 60) + 's' : (s % 60) + 's';
  };
  setInterval(() => {
    for (const el of document.querySelectorAll('[data-until]')) {
      const left = Date.parse(el.dataset.until) - Date.now();
      el.textContent = left > 0 ? 'resets in ' + span(left) : 'resetting…';
    }
  }, 1000);
  const refresh = async () => {
    if (busy || document.hidden) return;
    try {
      const response = await fetch(location.href, { headers: { accept: 'text/html' } });
      if (!response.ok) return;
      const next = new DOMParser().parseFromString(await response.text(), 'text/html');
      for (const id of sections) {
        const current = document.getElementById(id), fresh = next.getElementById(id);
        if (!current || !fresh) continue;
        // Leave alone what the user is working in: an open selector, a focused button.
        if (current.contains(document.activeElement) && document.activeElement !== document.body) continue;
        current.replaceWith(fresh);
      }
    } catch (_) { /* the server may be restarting: try again at the next tick */ }
  };
  setInterval(refresh, 5000);
})();
"#;
