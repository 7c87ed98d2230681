// Speech: text to speech with a voice, format and speed (a player and a download), and speech
// to text from a file or the microphone, with the words' timestamps and an SRT download.

import { call, getJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
let ui;
let voices = [];
let recorder = null;
let recorded = null; // the last recording, as a File
let lastAudio = null; // the object URL of the last speech

function fillVoices() {
  const entry = voices.find((v) => v.model === $("tts-model").value);
  const names = entry?.voices || [];
  $("tts-voice").replaceChildren(...names.map((name) => new Option(name, name)));
  if (entry) $("tts-voice").value = entry.default;
}

async function speak(event) {
  event.preventDefault();
  const format = $("tts-format").value;
  $("tts-go").disabled = true;
  $("tts-status").textContent = "Speaking…";
  const started = performance.now();
  try {
    const response = await call("/v1/audio/speech", {
      method: "POST",
      json: {
        model: $("tts-model").value,
        voice: $("tts-voice").value,
        input: $("tts-text").value,
        response_format: format,
        speed: Number($("tts-speed").value) || 1,
      },
    });
    const blob = await response.blob();
    if (lastAudio) URL.revokeObjectURL(lastAudio);
    lastAudio = URL.createObjectURL(blob);
    $("tts-audio").src = lastAudio;
    $("tts-audio").hidden = false;
    Object.assign($("tts-download"), { href: lastAudio, download: `speech.${format}`, hidden: false });
    $("tts-status").textContent = `${(blob.size / 1024).toFixed(0)} KiB in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  } catch (error) {
    $("tts-status").textContent = "";
    ui.notice(`Speech failed: ${error.message}`, true);
  } finally {
    $("tts-go").disabled = false;
  }
}

function stamp(seconds, comma = true) {
  const ms = Math.round(seconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const text = `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)}`;
  return `${text}${comma ? "," : "."}${pad(ms % 1000, 3)}`;
}

function srt(segments) {
  return segments.map((s, i) => `${i + 1}\n${stamp(s.start)} --> ${stamp(s.end)}\n${s.text.trim()}\n`).join("\n");
}

async function transcribe(event) {
  event.preventDefault();
  const file = $("stt-file").files[0] || recorded;
  if (!file) {
    ui.notice("Choose an audio file or record one first.", true);
    return;
  }
  const form = new FormData();
  form.append("model", $("stt-model").value);
  form.append("file", file, file.name || "audio.webm");
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "segment");
  $("stt-go").disabled = true;
  $("stt-status").textContent = "Transcribing…";
  const started = performance.now();
  try {
    const result = await (await call("/v1/audio/transcriptions", { method: "POST", form })).json();
    $("stt-text").textContent = result.text;
    const rows = (result.segments || []).map((s) => {
      const row = document.createElement("tr");
      for (const value of [stamp(s.start, false), stamp(s.end, false), s.text.trim()]) {
        const cell = document.createElement("td");
        cell.textContent = value;
        row.append(cell);
      }
      return row;
    });
    $("stt-segments").tBodies[0].replaceChildren(...rows);
    $("stt-segments").hidden = !rows.length;
    const link = $("stt-srt");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([srt(result.segments || [])], { type: "application/x-subrip" }));
    link.hidden = !rows.length;
    const seconds = (performance.now() - started) / 1000;
    $("stt-status").textContent = `${(result.duration || 0).toFixed(1)} s of ${result.language || "audio"} in ${seconds.toFixed(1)} s`;
  } catch (error) {
    $("stt-status").textContent = "";
    ui.notice(`Transcription failed: ${error.message}`, true);
  } finally {
    $("stt-go").disabled = false;
  }
}

async function record() {
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia) {
    ui.notice("This browser gives no microphone here (it needs https or localhost).", true);
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (e) => chunks.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      const type = recorder.mimeType || "audio/webm";
      recorded = new File(chunks, `recording.${type.includes("ogg") ? "ogg" : "webm"}`, { type });
      recorder = null;
      $("stt-file").value = "";
      $("stt-record").textContent = "Record";
      $("stt-status").textContent = "Recorded: press Transcribe.";
    };
    recorder.start();
    $("stt-record").textContent = "Stop recording";
    $("stt-status").textContent = "Recording…";
  } catch (error) {
    ui.notice(`No microphone: ${error.message}`, true);
  }
}

export function init(context) {
  ui = context;
  $("tts-form").addEventListener("submit", speak);
  $("tts-model").addEventListener("change", fillVoices);
  $("stt-form").addEventListener("submit", transcribe);
  $("stt-record").addEventListener("click", record);
  $("stt-file").addEventListener("change", () => {
    recorded = null;
  });
}

export async function setModels(list) {
  const speakers = ui.offerModels("tts-form", "tts-model", list, "text_to_speech");
  ui.offerModels("stt-form", "stt-model", list, "speech_to_text");
  if (speakers.length) {
    try {
      voices = (await getJSON("/v1/audio/voices")).data;
    } catch {
      voices = [];
    }
    fillVoices();
  }
}
