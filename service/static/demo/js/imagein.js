// The query image arrives by file picker, drag-and-drop onto the stage, or paste
// (anywhere on the page, unless the focus is in a text field with text to paste).

/**
 * @param {{input: HTMLInputElement, zone: HTMLElement}} els
 * @param {(file: File) => void} onImage
 */
export function wireImageInput({ input, zone }, onImage) {
  input.addEventListener("change", () => {
    if (input.files[0]) onImage(input.files[0]);
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.dataset.drag = "true";
  });
  zone.addEventListener("dragleave", () => delete zone.dataset.drag);
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    delete zone.dataset.drag;
    const file = firstImage(e.dataTransfer.files);
    if (file) onImage(file);
  });
  document.addEventListener("paste", (e) => {
    const file = firstImage(e.clipboardData ? e.clipboardData.files : []);
    if (!file) return; // plain text: let the field have it
    e.preventDefault();
    onImage(file);
  });
}

function firstImage(files) {
  return Array.from(files).find((f) => f.type.startsWith("image/")) || null;
}
