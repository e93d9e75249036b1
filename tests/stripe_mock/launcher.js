// Starts stripe-stateful-mock on 127.0.0.1 only (its own CLI binds every interface on port 8000).
// Usage: node launcher.js PORT   (or STRIPE_MOCK_PORT=PORT node launcher.js)
// Prints "stripe-stateful-mock listening on 127.0.0.1:PORT" once it accepts connections.
"use strict";

const port = Number.parseInt(process.argv[2] || process.env.STRIPE_MOCK_PORT || "", 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error("usage: node launcher.js PORT (a TCP port from 1 to 65535)");
    process.exit(2);
}

// The mock logs through loglevel; keep it to warnings unless LOG_LEVEL asks for more.
require("loglevel").setLevel(process.env.LOG_LEVEL || "warn");

const server = require("stripe-stateful-mock").createExpressApp().listen(port, "127.0.0.1", () => {
    console.log(`stripe-stateful-mock listening on 127.0.0.1:${port}`);
});
server.on("error", (err) => {
    console.error(`stripe-stateful-mock could not listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => server.close(() => process.exit(0)));
}
