// The status page's behaviour (no inline script: the CSP allows scripts from this origin only).
// Every data-refresh-ms it fetches /fragment with the page's own query (the state filter) and
// swaps the live part; the action buttons (Retry, Resend) send the token kept in this tab's
// sessionStorage as a Bearer token and show the node's answer.
'use strict';

(() => {
  const TOKEN_KEY = 'molsub-status-token';
  const body = document.body;
  const live = document.getElementById('live');
  const result = document.getElementById('action-result');
  const tokenField = document.getElementById('token');
  const refreshMs = Math.max(1000, Number(body.dataset.refreshMs) || 5000);
  let inFlight = false;

  function say(text, kind) {
    result.textContent = text;
    result.className = kind || '';
  }

  async function refresh() {
    if (inFlight || document.hidden) return;
    inFlight = true;
    try {
      const response = await fetch('/fragment' + window.location.search, {
        headers: { Accept: 'text/html' },
        cache: 'no-store',
        credentials: 'same-origin',
      });
      if (!response.ok) {
        say(`refresh failed: HTTP ${response.status}`, 'bad');
        return;
      }
      live.innerHTML = await response.text();
      body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
    } catch (err) {
      say(`refresh failed: ${err.message} (is the node running?)`, 'bad');
    } finally {
      inFlight = false;
    }
  }

  if (tokenField) {
    tokenField.value = sessionStorage.getItem(TOKEN_KEY) || '';
    tokenField.addEventListener('input', () => {
      if (tokenField.value) sessionStorage.setItem(TOKEN_KEY, tokenField.value);
      else sessionStorage.removeItem(TOKEN_KEY);
    });
    document.getElementById('forget-token').addEventListener('click', () => {
      tokenField.value = '';
      sessionStorage.removeItem(TOKEN_KEY);
      say('token forgotten', '');
    });
  }

  async function act(button) {
    const action = button.dataset.action;
    const unit = button.dataset.unit;
    const headers = { Accept: 'application/json' };
    const token = tokenField ? tokenField.value.trim() : '';
    if (token) headers.Authorization = `Bearer ${token}`;
    button.disabled = true;
    try {
      const response = await fetch(`/api/units/${encodeURIComponent(unit)}/${action}`, {
        method: 'POST',
        headers,
        cache: 'no-store',
        credentials: 'same-origin',
      });
      let answer = {};
      try {
        answer = await response.json();
      } catch (err) {
        answer = { error: `HTTP ${response.status}` };
      }
      if (response.ok) {
        say(`${action} of unit ${unit} accepted: ${answer.message || response.status}`, 'ok');
        refresh();
      } else {
        say(`${action} of unit ${unit} refused (HTTP ${response.status}): ${answer.error || ''}`, 'bad');
      }
    } catch (err) {
      say(`${action} of unit ${unit} failed: ${err.message}`, 'bad');
    } finally {
      button.disabled = false;
    }
  }

  // Delegated: the buttons are replaced with every refresh.
  live.addEventListener('click', (event) => {
    const button = event.target.closest('button.act');
    if (button) act(button);
  });

  window.setInterval(refresh, refreshMs);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refresh();
  });
})();
