// Preloaded into the agent CLIs the tests run (NODE_OPTIONS=--require=this file): a name other than
// localhost never resolves, and a connection to an address beyond loopback is refused, before any
// packet leaves the machine. Gemini CLI signed in with a Google account looks up its user's e-mail
// at www.googleapis.com; the tests allow 127.0.0.1 only.
"use strict";
const dns = require("dns");
const net = require("net");

const LOCAL_NAMES = new Set(["localhost", "127.0.0.1", "::1"]);

function refused(host) {
  const error = new Error(`getaddrinfo ENOTFOUND ${host} (tests reach 127.0.0.1 only)`);
  error.code = "ENOTFOUND";
  error.hostname = host;
  return error;
}

const lookup = dns.lookup;
dns.lookup = function (host, options, callback) {
  if (typeof options === "function") {
    callback = options;
    options = {};
  }
  if (!LOCAL_NAMES.has(host)) {
    process.nextTick(callback, refused(host));
    return {};
  }
  return lookup.call(this, host, options, callback);
};

const lookupPromise = dns.promises.lookup;
dns.promises.lookup = function (host, options) {
  return LOCAL_NAMES.has(host) ? lookupPromise.call(this, host, options) : Promise.reject(refused(host));
};

const connect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const first = Array.isArray(args[0]) ? args[0][0] : args[0]; // net.connect() passes [options, callback]
  const options = typeof first === "object" && first !== null ? first : { port: first, host: args[1] };
  const host = options.host;
  if (!options.path && host && net.isIP(host) && !(host === "::1" || host.startsWith("127."))) {
    process.nextTick(() => this.destroy(refused(host)));
    return this;
  }
  return connect.apply(this, args);
};
