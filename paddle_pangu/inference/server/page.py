"""The web page served at `/`: type a prompt, watch the tokens stream in (SSE over fetch, no libraries)."""

PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<title>PanGu-α</title>
<style>
 body { font-family: sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
 textarea { width: 100%; font-size: 1rem; }
 #output { white-space: pre-wrap; border: 1px solid #ccc; min-height: 6rem; padding: .5rem; }
 #output .prompt { color: #666; }
 label { margin-right: 1rem; }
</style>
</head>
<body>
<h1>PanGu-α</h1>
<textarea id="prompt" rows="4" placeholder="输入提示，例如：北京是"></textarea>
<p>
 <label>max tokens <input id="max_tokens" type="number" value="32" min="1" style="width:5rem"></label>
 <label>temperature <input id="temperature" type="number" value="0" min="0" max="2" step="0.1" style="width:5rem"></label>
 <label>top-p <input id="top_p" type="number" value="1" min="0.01" max="1" step="0.05" style="width:5rem"></label>
 <label>API key <input id="api_key" type="password" placeholder="if the server has --api-key" style="width:9rem"></label>
 <button id="send">Generate</button> <button id="stop" disabled>Stop</button>
</p>
<div id="output" data-chunks="0"></div>
<p id="status" data-state="idle">idle</p>
<script>
const $ = (id) => document.getElementById(id);
let controller = null;

function setStatus(state, text) { $("status").dataset.state = state; $("status").textContent = text || state; }

function onEvent(data) {
  if (data === "[DONE]") return;
  const chunk = JSON.parse(data);
  if (chunk.error) { setStatus("error", "error: " + chunk.error.message); return; }
  const choice = chunk.choices[0];
  if (choice.text) {
    $("generated").textContent += choice.text;
    $("output").dataset.chunks = String(Number($("output").dataset.chunks) + 1);
  }
  if (choice.finish_reason) $("output").dataset.finish = choice.finish_reason;
}

async function generate() {
  const prompt = $("prompt").value;
  $("output").innerHTML = '<span class="prompt"></span><span id="generated"></span>';
  $("output").querySelector(".prompt").textContent = prompt;
  $("output").dataset.chunks = "0";
  setStatus("streaming", "streaming…");
  controller = new AbortController();
  $("send").disabled = true; $("stop").disabled = false;
  const body = { prompt, stream: true, max_tokens: Number($("max_tokens").value),
                 temperature: Number($("temperature").value), top_p: Number($("top_p").value) };
  try {
    const headers = { "Content-Type": "application/json" };
    if ($("api_key").value) headers["Authorization"] = "Bearer " + $("api_key").value;
    const resp = await fetch("/v1/completions", { method: "POST", headers,
                                                  body: JSON.stringify(body), signal: controller.signal });
    if (!resp.ok) { const err = await resp.json(); setStatus("error", "error: " + err.error.message); return; }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
        for (const line of event.split("\\n")) if (line.startsWith("data: ")) onEvent(line.slice(6));
      }
    }
    if ($("status").dataset.state === "streaming") setStatus("done");
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : "error", e.name === "AbortError" ? "stopped" : "error: " + e);
  } finally {
    $("send").disabled = false; $("stop").disabled = true;
  }
}

$("send").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
</script>
</body>
</html>
"""
