// A gRPC load client in Node (@grpc/grpc-js), for the points benches (not a test).
//
//     node bench/grpc_load.mjs CONFIG.json
//
// The benches' own clients are Python grpcio: on this 2-core machine they cost about 0.4 ms of CPU
// per call, a core's worth at 2,500 calls/s, taken from the server they measure. This client costs
// about half that, and unlike h2load it sends every call its own request (a new idempotency key),
// so it can drive Credit and Reserve+Capture too. The config (written by the bench):
//   {"address": "127.0.0.1:PORT", "proto_root": "proto", "phase": "credit" | "reserve_capture" |
//    "balance", "seconds": 10, "clients": 64, "channels": 8, "members": 1000,
//    "member_prefix": "bench-", "service": [[key, value], ...],            // the service's metadata
//    "on_behalf": {"bench-1": [[key, value], ...], ...}}                     // Reserve's, per member
// It prints one JSON line: calls answered and failed, the seconds it drove, latency p50 / p99 /
// max in ms, its own CPU seconds, and the first error's text (or null).
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const definition = protoLoader.loadSync("kizuna/points/v1/points.proto", {
  includeDirs: [config.proto_root],
  keepCase: true,
  longs: Number,
  enums: String,
});
const { PointsService } = grpc.loadPackageDefinition(definition).kizuna.points.v1;

function metadata(pairs) {
  const md = new grpc.Metadata();
  for (const [key, value] of pairs) md.add(key, value);
  return md;
}

// One connection per channel: a local subchannel pool each, as the Python clients do.
const stubs = Array.from(
  { length: config.channels },
  () => new PointsService(config.address, grpc.credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 }),
);
const service = metadata(config.service);
const onBehalf = Object.fromEntries(Object.entries(config.on_behalf ?? {}).map(([m, pairs]) => [m, metadata(pairs)]));

function call(stub, method, request, md) {
  return new Promise((resolve, reject) => {
    stub[method](request, md, { deadline: Date.now() + 30_000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

const key = () => randomUUID().replaceAll("-", "");
const member = (i, n) => `${config.member_prefix}${((i * 7919 + n) % config.members) + 1}`;
const phases = {
  credit: (stub, i, n) =>
    call(
      stub,
      "Credit",
      { member_id: member(i, n), amount: 100, kind: "CREDIT_KIND_REGULAR", reason: "bench", idempotency_key: key() },
      service,
    ),
  reserve_capture: async (stub, i, n) => {
    const m = member(i, n);
    const held = await call(stub, "Reserve", { member_id: m, amount: 1, idempotency_key: key() }, onBehalf[m]);
    await call(stub, "Capture", { reservation_id: held.reservation_id, idempotency_key: key() }, service);
  },
  balance: (stub, i, n) => call(stub, "GetBalance", { member_id: member(i, n) }, service),
};
const phase = phases[config.phase];
if (!phase) throw new Error(`unknown phase ${config.phase}`);

await Promise.all(
  stubs.map((stub) => new Promise((resolve, reject) => stub.waitForReady(Date.now() + 10_000, (e) => (e ? reject(e) : resolve())))),
);
const latencies = [];
let failed = 0;
let firstError = null;
const began = performance.now();
const stop = began + config.seconds * 1000;
const cpuBefore = process.cpuUsage();

async function client(i) {
  for (let n = 0; performance.now() < stop; n++) {
    const start = performance.now();
    try {
      await phase(stubs[i % stubs.length], i, n);
      latencies.push(performance.now() - start);
    } catch (error) {
      failed++;
      firstError ??= `${error.code} ${error.details}`;
    }
  }
}

await Promise.all(Array.from({ length: config.clients }, (_, i) => client(i)));
const seconds = (performance.now() - began) / 1000;
const cpu = process.cpuUsage(cpuBefore);
latencies.sort((a, b) => a - b);
const at = (q) => (latencies.length ? latencies[Math.min(Math.floor(latencies.length * q), latencies.length - 1)] : null);
console.log(
  JSON.stringify({
    answered: latencies.length,
    failed,
    seconds,
    p50: at(0.5),
    p99: at(0.99),
    max: latencies.at(-1) ?? null,
    client_cpu: (cpu.user + cpu.system) / 1e6,
    first_error: firstError,
  }),
);
for (const stub of stubs) stub.close();
