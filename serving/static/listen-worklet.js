// The Listen button's AudioWorklet: microphone samples in, frames of little-endian 16-bit mono PCM
// out (what WebSocket /listen reads), posted to page.js as ArrayBuffers of `frameSeconds` each.
// It runs at the AudioContext's rate, which page.js chose; nothing here resamples.
"use strict";

class PcmFrames extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const seconds = options.processorOptions.frameSeconds;
    this.size = Math.max(128, Math.round(sampleRate * seconds)); // samples per frame
    this.frame = new DataView(new ArrayBuffer(2 * this.size));
    this.held = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no input connected (yet): keep running
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let s = 0;
      for (const c of channels) s += c[i];
      s = Math.max(-1, Math.min(1, s / channels.length)); // mono: the mean of the channels
      // DataView, not Int16Array: the protocol is little-endian whatever the machine is.
      this.frame.setInt16(2 * this.held, s < 0 ? s * 0x8000 : s * 0x7fff, true);
      if (++this.held === this.size) {
        const buffer = this.frame.buffer;
        this.port.postMessage(buffer, [buffer]); // transferred, not copied
        this.frame = new DataView(new ArrayBuffer(2 * this.size));
        this.held = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-frames", PcmFrames);
