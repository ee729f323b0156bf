// The gptlab chat page's behaviour (index.html): models, streaming replies, stop, reset.
"use strict";

// ---------------------------------------------------------------------------
// Element handles & state
// ---------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
const el = {
  model: $("model"),
  apiKey: $("api-key"),
  temperature: $("temperature"),
  topK: $("top-k"),
  topP: $("top-p"),
  maxTokens: $("max-tokens"),
  messages: $("messages"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  reset: $("reset"),
  status: $("status"),
};

const API_KEY_STORAGE = "gptlab.apiKey";
const DEFAULT_MAX_TOKENS = 200;

/** Context length of each model, from GET /v1/models. */
const contexts = {};
/** Whether the user has typed a max tokens value (then the page leaves it alone). */
let maxTokensEdited = false;

/** Conversation history sent with every request: [{role, content}, ...]. */
let history = [];
/** AbortController of the in-flight request, or null when idle. */
let controller = null;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/** Safe localStorage access (it may be unavailable, e.g. in some sandboxes). */
function storageGet(key) {
  try { return window.localStorage.getItem(key); } catch (_) { return null; }
}
function storageSet(key, value) {
  try {
    if (value) window.localStorage.setItem(key, value);
    else window.localStorage.removeItem(key);
  } catch (_) { /* ignore */ }
}

/** Request headers, including the bearer token when an API key is set. */
function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = el.apiKey.value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

/** Set the status line (plain text; optional error styling). */
function setStatus(text, isError) {
  el.status.textContent = text || "";
  el.status.classList.toggle("error", !!isError);
}

/** Extract a human-readable message from a non-2xx response. */
async function errorMessage(response) {
  let text = "";
  try { text = await response.text(); } catch (_) { /* ignore */ }
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      if (typeof body.error === "string") return body.error;
      if (body.error.message) return body.error.message;
    }
    if (body && typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}` + (text ? `: ${text.slice(0, 300)}` : "");
}

/** Keep the transcript scrolled to the bottom if the user is already near it. */
function scrollToBottom(force) {
  const m = el.messages;
  const nearBottom = m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  if (force || nearBottom) m.scrollTop = m.scrollHeight;
}

/**
 * Append a message bubble to the transcript.
 * Returns {root, content} so the caller can update the text as it streams.
 * All model/user text goes through textContent (never innerHTML).
 */
function addMessage(role, text) {
  const root = document.createElement("div");
  root.className = "message " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text || "";
  root.append(label, content);
  el.messages.appendChild(root);
  scrollToBottom(true);
  return { root, content };
}

/** Add a small note (finish reason) or an error box under a message. */
function addNote(root, cls, text) {
  const note = document.createElement("span");
  note.className = cls;
  note.textContent = text;
  root.appendChild(note);
  scrollToBottom(false);
}

/** Toggle UI state between idle and streaming. */
function setBusy(busy) {
  el.send.disabled = busy;
  el.stop.disabled = !busy;
  el.model.disabled = busy;
}

/**
 * Read and lightly validate a numeric control. Clamps into [min, max] and
 * falls back to the default when the field is empty / not a number.
 */
function readNumber(input, { min, max, integer, fallback }) {
  let v = Number(input.value);
  if (input.value.trim() === "" || !Number.isFinite(v)) v = fallback;
  if (integer) v = Math.round(v);
  if (min !== undefined) v = Math.max(min, v);
  if (max !== undefined) v = Math.min(max, v);
  input.value = String(v); // reflect the clamped value back in the UI
  return v;
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

/**
 * The default max tokens fits the chosen model: at most half its context, so that the first
 * messages and the reply fit without the server sliding the window.
 */
function fitMaxTokens() {
  if (maxTokensEdited) return;
  const context = contexts[el.model.value];
  const fit = context ? Math.max(1, Math.floor(context / 2)) : DEFAULT_MAX_TOKENS;
  el.maxTokens.value = String(Math.min(DEFAULT_MAX_TOKENS, fit));
}

/** Fill the model picker from GET /v1/models. */
async function loadModels() {
  const previous = el.model.value;
  try {
    const res = await fetch("/v1/models", { headers: headers(false) });
    if (!res.ok) throw new Error(await errorMessage(res));
    const body = await res.json();
    const models = (body && Array.isArray(body.data)) ? body.data : [];
    el.model.replaceChildren();
    if (models.length === 0) {
      const opt = document.createElement("option");
      opt.value = "";
      opt.textContent = "no models";
      el.model.appendChild(opt);
      setStatus("The server reports no models.", true);
      return;
    }
    for (const m of models) {
      if (m.context_length) contexts[m.id] = m.context_length;
      const opt = document.createElement("option");
      opt.value = m.id;
      // a chat-tuned model names its chat template; "transcript" is a base model
      const about = [m.context_length ? `ctx ${m.context_length}` : "", m.chat_format || ""]
        .filter(Boolean).join(", ");
      opt.textContent = about ? `${m.id} (${about})` : m.id;
      el.model.appendChild(opt);
    }
    if (previous && models.some((m) => m.id === previous)) el.model.value = previous;
    fitMaxTokens();
    if (el.status.classList.contains("error")) setStatus("");
  } catch (err) {
    el.model.replaceChildren();
    const opt = document.createElement("option");
    opt.value = "";
    opt.textContent = "models unavailable";
    el.model.appendChild(opt);
    setStatus("Could not load models: " + err.message, true);
  }
}

// ---------------------------------------------------------------------------
// Server-sent events parsing
// ---------------------------------------------------------------------------

/**
 * Incremental SSE parser. Feed it decoded text chunks of any size; it calls
 * onData(dataString) once per complete event (events are separated by a
 * blank line; multiple `data:` lines of one event are joined with "\n").
 * Handles \n, \r\n and \r line endings and events split across chunks.
 */
function createSSEParser(onData) {
  let buffer = "";
  let dataLines = [];

  function dispatch() {
    if (dataLines.length) onData(dataLines.join("\n"));
    dataLines = [];
  }

  function handleLine(line) {
    if (line === "") { dispatch(); return; }       // blank line ends an event
    if (line.startsWith(":")) return;               // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") dataLines.push(value);
    // other fields (event, id, retry) are not used by this API
  }

  return {
    push(text) {
      buffer += text;
      // Split on any line terminator; keep the (possibly partial) last line.
      // A trailing lone "\r" might be the first half of "\r\n": wait for more.
      let match;
      const re = /\r\n|\r|\n/g;
      let start = 0;
      while ((match = re.exec(buffer)) !== null) {
        if (match[0] === "\r" && match.index === buffer.length - 1) break;
        handleLine(buffer.slice(start, match.index));
        start = match.index + match[0].length;
      }
      buffer = buffer.slice(start);
    },
    /** Flush at end of stream (handles a missing final blank line). */
    end() {
      if (buffer) { handleLine(buffer.replace(/\r$/, "")); buffer = ""; }
      dispatch();
    },
  };
}

// ---------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------

/** Send the prompt (plus history) and stream the assistant's answer. */
async function send() {
  if (controller) return;                      // already streaming
  const text = el.prompt.value;
  if (!text.trim()) { el.prompt.focus(); return; }
  const model = el.model.value;
  if (!model) { setStatus("No model selected.", true); return; }

  const params = {
    temperature: readNumber(el.temperature, { min: 0, max: 2, fallback: 0.8 }),
    top_k: readNumber(el.topK, { min: 0, integer: true, fallback: 0 }),
    top_p: readNumber(el.topP, { min: 0, max: 1, fallback: 1 }),
    max_tokens: readNumber(el.maxTokens, { min: 1, integer: true, fallback: DEFAULT_MAX_TOKENS }),
  };

  // Show the user's message and record it in the history.
  addMessage("user", text);
  history.push({ role: "user", content: text });
  el.prompt.value = "";

  const assistant = addMessage("assistant", "");
  assistant.root.classList.add("streaming");

  controller = new AbortController();
  setBusy(true);
  setStatus("generating…");

  const started = performance.now();
  let reply = "";          // accumulated assistant text
  let chunks = 0;          // number of content deltas (≈ tokens)
  let finishReason = null;
  let done = false;
  let aborted = false;
  let errorText = null;

  try {
    const res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify({ model, messages: history, stream: true, ...params }),
      signal: controller.signal,
    });
    if (!res.ok) throw new Error(await errorMessage(res));
    if (!res.body) throw new Error("The response has no body to stream.");

    // Handle one SSE `data:` payload.
    const parser = createSSEParser((data) => {
      if (done) return;
      if (data.trim() === "[DONE]") { done = true; return; }
      let chunk;
      try { chunk = JSON.parse(data); } catch (_) { return; } // ignore junk
      if (chunk && chunk.error) {
        errorText = (chunk.error && chunk.error.message) || String(chunk.error);
        done = true;
        return;
      }
      const choice = chunk && Array.isArray(chunk.choices) ? chunk.choices[0] : null;
      if (!choice) return;
      const delta = choice.delta || {};
      if (typeof delta.content === "string" && delta.content.length) {
        reply += delta.content;
        chunks += 1;
        assistant.content.textContent = reply;   // grows as tokens arrive
        scrollToBottom(false);
      }
      if (choice.finish_reason) finishReason = choice.finish_reason;
    });

    const reader = res.body.getReader();
    const decoder = new TextDecoder("utf-8");
    while (!done) {
      const { value, done: streamDone } = await reader.read();
      if (streamDone) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
    if (!done) {
      parser.push(decoder.decode());           // flush the decoder
      parser.end();
    } else {
      reader.cancel().catch(() => {});         // stop reading after [DONE]
    }
    if (errorText) throw new Error(errorText);
  } catch (err) {
    if (err && err.name === "AbortError") aborted = true;
    else errorText = (err && err.message) || String(err);
  } finally {
    controller = null;
    setBusy(false);
    assistant.root.classList.remove("streaming");
  }

  const seconds = (performance.now() - started) / 1000;

  // Keep whatever text was produced in the history (so the chat can continue).
  if (reply) history.push({ role: "assistant", content: reply });

  if (errorText) {
    addNote(assistant.root, "error", errorText);
    setStatus("error", true);
    if (!reply) {
      // Nothing generated: drop the failed exchange from the history and put
      // the prompt back so the user can retry easily.
      history.pop();
      if (!el.prompt.value) el.prompt.value = text;
    }
  } else if (aborted) {
    addNote(assistant.root, "finish", "(stopped by user)");
    setStatus(`stopped · ${chunks} tokens · ${seconds.toFixed(1)} s`);
  } else {
    addNote(assistant.root, "finish", `(stopped: ${finishReason || "end of stream"})`);
    const rate = seconds > 0 ? ` · ${(chunks / seconds).toFixed(1)} tok/s` : "";
    setStatus(`${chunks} tokens · ${seconds.toFixed(1)} s${rate}`);
  }
  el.prompt.focus();
}

/** Abort the in-flight request, if any. */
function stop() {
  if (controller) controller.abort();
}

/** Start a new conversation. */
function reset() {
  stop();
  history = [];
  el.messages.replaceChildren();
  setStatus("");
  el.prompt.focus();
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------

el.send.addEventListener("click", send);
el.model.addEventListener("change", fitMaxTokens);
el.maxTokens.addEventListener("input", () => { maxTokensEdited = true; });
el.stop.addEventListener("click", stop);
el.reset.addEventListener("click", reset);

// Enter sends, Shift+Enter inserts a newline (ignore IME composition).
el.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});

// API key: restore from / persist to localStorage; reload models on change
// (the server may require the key to list models).
el.apiKey.value = storageGet(API_KEY_STORAGE) || "";
el.apiKey.addEventListener("input", () => storageSet(API_KEY_STORAGE, el.apiKey.value.trim()));
el.apiKey.addEventListener("change", loadModels);

loadModels();
el.prompt.focus();
