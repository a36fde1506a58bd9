// The Node entry point: tcp://, tls://, unix:// on node:net / node:tls; ws:// and wss:// on
// Node's WebSocket (22+) or the `ws` package.

import { dialers } from "./client.js";
import { dialSocket } from "./transport/node.js";
import { dialWebSocket } from "./transport/websocket.js";

dialers.tcp = dialSocket;
dialers.tls = dialSocket;
dialers.unix = dialSocket;
dialers.ws = dialWebSocket({ node: true });
dialers.wss = dialWebSocket({ node: true });

export * from "./api.js";
