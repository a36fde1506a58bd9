// Fake peers for bad-input tests: a TCP server and a WebSocket server that read the client's
// frames with the real decoder and answer with scripted bytes.

import * as net from "node:net";
import { WebSocketServer, type WebSocket } from "ws";
import { Decoder, type DecodedFrame, Flag, FrameType, encodeFrame, encodeHello, frame, hello } from "../../src/proto/index.js";

/** The HELLO reply a broker would send to `offer` (id echoed, defaults agreed). */
export function helloReply(id = 0n, over: Partial<Parameters<typeof hello>[0]> = {}): Uint8Array {
  return encodeFrame(
    frame({ type: FrameType.HELLO, flags: Flag.REPLY, id, payload: encodeHello(hello({ features: 0x73, name: "fake", session: "s1", ...over })) }),
  );
}

export interface Peer {
  /** Frames the client sent, decoded. */
  received: DecodedFrame[];
  send(b: Uint8Array | string): void;
  end(): void;
}

export interface Fake {
  url: string;
  close(): Promise<void>;
}

/** A TCP server: `onFrame` is called for each frame the client sends. */
export async function fakeTcp(onFrame: (p: Peer, f: DecodedFrame) => void): Promise<Fake> {
  const socks = new Set<net.Socket>();
  const server = net.createServer((s) => {
    socks.add(s);
    const d = new Decoder();
    const peer: Peer = { received: [], send: (b) => s.write(b), end: () => s.end() };
    s.on("data", (b) => {
      d.push(b);
      for (let r = d.next(); r !== null && !(r instanceof Error); r = d.next()) {
        peer.received.push(r);
        onFrame(peer, r);
      }
    });
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `tcp://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => {
      for (const s of socks) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

export interface WsPeer extends Peer {
  ws: WebSocket;
  /** The close code the client sent, once it closed. */
  closeCode?: number;
}

/** A WebSocket server speaking `mitto.v1` (or, with `protocol: false`, refusing it). */
export async function fakeWs(onFrame: (p: WsPeer, f: DecodedFrame) => void, opts: { protocol?: boolean } = {}): Promise<Fake & { peers: WsPeer[] }> {
  const peers: WsPeer[] = [];
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (ps) => (opts.protocol === false ? false : ps.has("mitto.v1") ? "mitto.v1" : false),
  });
  wss.on("connection", (ws) => {
    const d = new Decoder();
    const peer: WsPeer = { ws, received: [], send: (b) => ws.send(b), end: () => ws.close() };
    peers.push(peer);
    ws.on("message", (data: Buffer) => {
      d.push(new Uint8Array(data));
      for (let r = d.next(); r !== null && !(r instanceof Error); r = d.next()) {
        peer.received.push(r);
        onFrame(peer, r);
      }
    });
    ws.on("close", (code) => (peer.closeCode = code));
  });
  await new Promise<void>((r) => wss.on("listening", () => r()));
  const port = (wss.address() as net.AddressInfo).port;
  return {
    url: `ws://127.0.0.1:${port}/mitto`,
    peers,
    close: () => {
      for (const c of wss.clients) c.terminate();
      return new Promise((r) => wss.close(() => r()));
    },
  };
}
