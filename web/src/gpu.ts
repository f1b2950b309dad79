// WebGPU status for the header pill. Merges run on the CPU in this version; the status tells the
// user what the next tabs (running models) will find.
export type GpuStatus = { kind: 'adapter' | 'no-adapter' | 'missing'; text: string; detail: string };

export async function gpuStatus(): Promise<GpuStatus> {
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  if (!gpu) return { kind: 'missing', text: 'WebGPU: not available — CPU path', detail: 'navigator.gpu is missing in this browser' };
  try {
    const adapter = (await gpu.requestAdapter()) as { info?: { vendor?: string; architecture?: string; description?: string } } | null;
    if (!adapter) return { kind: 'no-adapter', text: 'WebGPU: no adapter — CPU path', detail: 'navigator.gpu is present but requestAdapter() returned null' };
    const info = adapter.info ?? {};
    const name = [info.vendor, info.architecture || info.description].filter(Boolean).join(' ');
    return { kind: 'adapter', text: `WebGPU: ${name || 'adapter found'}`, detail: 'a WebGPU adapter is available' };
  } catch (e) {
    return { kind: 'no-adapter', text: 'WebGPU: error — CPU path', detail: String(e) };
  }
}
