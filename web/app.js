// Classify a photo in the browser with the on-device model (softmax output + TFLite Model Metadata).
// MediaPipe Tasks reads the labels and the input normalisation from the model file itself, so nothing
// about the model is repeated here. The JavaScript and the WASM come from the npm package, served by
// this origin (make web): no CDN, and the Content-Security-Policy forbids any other origin anyway.
import { FilesetResolver, ImageClassifier } from "./node_modules/@mediapipe/tasks-vision/vision_bundle.mjs";

const MODEL_URL = "model/model.tflite";
const WASM_DIR = new URL("node_modules/@mediapipe/tasks-vision/wasm", document.baseURI).href;
const TOP_K = 3;
// How the photo reaches the model (docs/on-device.md measured both on the test split):
// "page"      - resized here to the model's input, whole photo, aspect ratio ignored, with the browser's
//               high-quality (antialiased) smoothing: the framing the model was trained on;
// "mediapipe" - the photo as it is; MediaPipe stretches it to the input size itself.
const params = new URLSearchParams(location.search);
const FRAMING = params.get("framing") === "mediapipe" ? "mediapipe" : "page";
let inputSize = null; // [height, width], from the model's sidecar (model/model.json)

const $ = (id) => document.getElementById(id);
const setState = (state, message) => {
  document.body.dataset.state = state;
  if (message !== undefined) $("status").textContent = message;
};

let classifier = null;
let loadMs = null;

async function loadModel() {
  const start = performance.now();
  const sidecar = await (await fetch(MODEL_URL.replace(/\.tflite$/, ".json"))).json();
  inputSize = [sidecar.input.height, sidecar.input.width];
  const fileset = await FilesetResolver.forVisionTasks(WASM_DIR);
  classifier = await ImageClassifier.createFromOptions(fileset, {
    // CPU (XNNPACK in WASM): the same kernels everywhere; the GPU delegate needs WebGL2 and differs per GPU.
    baseOptions: { modelAssetPath: MODEL_URL, delegate: "CPU" },
    runningMode: "IMAGE",
    maxResults: TOP_K,
  });
  loadMs = performance.now() - start;
  setState("ready", "Ready: drop or pick a photo.");
  $("timing").textContent = `Model loaded in ${loadMs.toFixed(0)} ms.`;
  $("timing").dataset.loadMs = String(loadMs);
}

function frame(bitmap) {
  if (FRAMING === "mediapipe") return bitmap;
  const canvas = document.createElement("canvas");
  [canvas.height, canvas.width] = inputSize;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function render(categories, ms) {
  const list = $("results");
  list.replaceChildren();
  for (const category of categories) {
    const item = document.createElement("li");
    item.dataset.label = category.categoryName;
    item.dataset.score = String(category.score);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = category.categoryName;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * category.score).toFixed(1)}%`;
    bar.append(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(100 * category.score).toFixed(1)}%`;
    item.append(label, bar, score);
    list.append(item);
  }
  $("timing").textContent =
    `Classified in ${ms.toFixed(0)} ms on this device (model loaded in ${loadMs.toFixed(0)} ms).`;
  $("timing").dataset.ms = String(ms);
}

async function classifyFile(file) {
  if (!classifier) return;
  if (!file.type.startsWith("image/")) {
    setState("error", `${file.name} is not an image.`);
    return;
  }
  setState("classifying", `Classifying ${file.name}…`);
  let bitmap;
  try {
    // Upright as the camera meant it (EXIF orientation), like the server's decoder.
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    setState("error", `${file.name} could not be decoded as an image.`);
    return;
  }
  const preview = $("preview");
  URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("prompt").hidden = true;
  const start = performance.now();
  const result = classifier.classify(frame(bitmap));
  const ms = performance.now() - start;
  bitmap.close();
  render(result.classifications[0].categories, ms);
  setState("done", `${file.name}: ${result.classifications[0].categories[0].categoryName}`);
}

const drop = $("drop");
$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // so that picking the same photo again classifies it again
  if (file) classifyFile(file);
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classifyFile(event.dataTransfer.files[0]);
});

loadModel().catch((error) => setState("error", `The model could not be loaded: ${error.message ?? error}`));
