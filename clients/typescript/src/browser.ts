// The browser entry point: ws:// and wss:// only, on the browser's WebSocket.

import { dialers } from "./client.js";
import { dialWebSocket } from "./transport/websocket.js";

dialers.ws = dialWebSocket();
dialers.wss = dialWebSocket();

export * from "./api.js";
