// A real chatd for the tests: the binary (CHATD_BIN, built by `cargo build`) as a child
// process on free ports with a SQLite database of its own, its banner read for the
// addresses and the dev app's credentials. It can be stopped and started again on the same
// ports and database, as a restart in production.

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export class Chatd {
  mqttUrl = "";
  /** The web app (`{api}/web/`), when started with `{ web: true }`. */
  webUrl = "";
  api = "";
  clientId = "";
  clientSecret = "";
  private child?: ChildProcess;
  private readonly dir = mkdtempSync(join(tmpdir(), "chatd-js-"));
  private mqttAddr = "127.0.0.1:0";
  private apiAddr = "127.0.0.1:0";
  private wsAddr = "127.0.0.1:0";

  /** `web`: MQTT over WebSocket on, for the web app in a browser. */
  constructor(private readonly opts: { web?: boolean } = {}) {}

  async start(): Promise<void> {
    const bin = process.env.CHATD_BIN ?? new URL("../../../../target/debug/chatd", import.meta.url).pathname;
    const child = spawn(bin, [], {
      env: {
        // chatd reads every CHATD_* variable as a setting: none of ours (CHATD_BIN) leaks in.
        ...Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("CHATD_"))),
        DATABASE_URL: `sqlite://${join(this.dir, "chat.db")}`,
        CHATD_DATA_DIR: this.dir,
        CHATD_MQTT__TCP: this.mqttAddr,
        CHATD_MQTT__WS: this.opts.web ? this.wsAddr : "",
        CHATD_API__LISTEN: this.apiAddr,
        CHATD_MQTT__BUDGETS__SEND__PER_SEC: "100000",
        CHATD_MQTT__BUDGETS__SEND__BURST: "100000",
        RUST_LOG: process.env.CHILD_LOG ?? "warn,rumqttd=off",
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    this.child = child;
    const lines = createInterface({ input: child.stdout! });
    const banner: string[] = [];
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`chatd printed no banner: ${banner.join("\n")}`)), 30_000);
      child.once("exit", (code) => reject(new Error(`chatd exited (${code}): ${banner.join("\n")}`)));
      lines.on("line", (line) => {
        banner.push(line);
        const value = (prefix: string) => line.slice(line.indexOf(prefix) + prefix.length).trim();
        if (line.includes("client_id:")) this.clientId ||= value("client_id:");
        if (line.includes("client_secret:")) this.clientSecret ||= value("client_secret:");
        if (line.startsWith("MQTT (TCP):")) {
          this.mqttAddr = value("MQTT (TCP):");
          this.mqttUrl = `mqtt://${this.mqttAddr}`;
        }
        if (line.startsWith("MQTT (WebSocket):") && this.opts.web) {
          this.wsAddr = value("MQTT (WebSocket):").replace("ws://", "").replace("/mqtt", "");
        }
        if (line.startsWith("REST API:")) {
          this.api = value("REST API:");
          this.webUrl = `${this.api}/web/`;
          this.apiAddr = this.api.replace("http://", "");
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  /** Stops the server as an operator would (SIGTERM: it acks what it took, then goes). */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once("exit", () => resolve());
      child.kill("SIGTERM");
    });
  }

  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A REST call to `/demo/chat{path}`; answers the JSON body, throws on an error status. */
  async rest(method: string, path: string, body?: unknown, token?: string): Promise<any> {
    const resp = await fetch(`${this.api}/demo/chat${path}`, {
      method,
      headers: {
        "content-type": "application/json",
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await resp.json();
    if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${JSON.stringify(answer)}`);
    return answer;
  }

  async appToken(): Promise<string> {
    const grant = { grant_type: "client_credentials", client_id: this.clientId, client_secret: this.clientSecret };
    return (await this.rest("POST", "/token", grant)).access_token;
  }

  /** Creates users (password "pw"). */
  async users(...names: string[]): Promise<void> {
    const app = await this.appToken();
    await this.rest("POST", "/users", names.map((username) => ({ username, password: "pw" })), app);
  }

  /** A `getToken` for a user: a fresh password token per call, counting the calls. */
  tokens(username: string): { getToken: () => Promise<string>; calls: () => number } {
    let calls = 0;
    return {
      getToken: async () => {
        calls += 1;
        const grant = { grant_type: "password", username, password: "pw" };
        return (await this.rest("POST", "/token", grant)).access_token;
      },
      calls: () => calls,
    };
  }
}
