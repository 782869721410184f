// The fpol extension: the grammar and language configuration come from package.json; this
// starts `fpol lsp` (setting fpol.command) for .fpol files over stdio.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("fpol").get("command", ["fpol", "lsp"]);
  const server = { command, args, transport: TransportKind.stdio };
  client = new LanguageClient(
    "fpol",
    "fpol language server",
    { run: server, debug: server },
    { documentSelector: [{ scheme: "file", language: "fpol" }, { scheme: "untitled", language: "fpol" }] }
  );
  context.subscriptions.push(client);
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
