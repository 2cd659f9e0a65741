// What the suite needs in Node that a browser has: WebSocket (Node 20 has none by default;
// the `ws` package), fetch (Node's own), and chai with chai-string.
import { WebSocket } from "ws";
import chai from "chai";
import chaiString from "chai-string";

chai.use(chaiString);

globalThis.WebSocket = WebSocket;
globalThis.chai = chai;
