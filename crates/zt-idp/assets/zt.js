// The sign-in and enrollment pages' only script: WebAuthn ceremonies through
// navigator.credentials, talking JSON to this origin. No framework, no
// external code. The server keeps each ceremony's state; this only carries
// the options to the authenticator and its answer back.
"use strict";

(function () {
  function fromBase64url(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) {
      binary += String.fromCharCode(bytes[i]);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function decodeDescriptors(list) {
    return (list || []).map(function (descriptor) {
      var copy = Object.assign({}, descriptor);
      copy.id = fromBase64url(descriptor.id);
      return copy;
    });
  }

  // The server's options, with the binary members as ArrayBuffers.
  function creationOptions(options) {
    var publicKey = Object.assign({}, options.publicKey);
    publicKey.challenge = fromBase64url(publicKey.challenge);
    publicKey.user = Object.assign({}, publicKey.user, { id: fromBase64url(publicKey.user.id) });
    publicKey.excludeCredentials = decodeDescriptors(publicKey.excludeCredentials);
    return { publicKey: publicKey };
  }

  function requestOptions(options) {
    var publicKey = Object.assign({}, options.publicKey);
    publicKey.challenge = fromBase64url(publicKey.challenge);
    publicKey.allowCredentials = decodeDescriptors(publicKey.allowCredentials);
    return { publicKey: publicKey };
  }

  function registration(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: toBase64url(response.attestationObject),
        clientDataJSON: toBase64url(response.clientDataJSON),
        transports: response.getTransports ? response.getTransports() : undefined,
      },
      extensions: {},
    };
  }

  function assertion(credential) {
    var response = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: toBase64url(response.authenticatorData),
        clientDataJSON: toBase64url(response.clientDataJSON),
        signature: toBase64url(response.signature),
        userHandle: response.userHandle ? toBase64url(response.userHandle) : null,
      },
      extensions: {},
    };
  }

  function post(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    }).then(function (response) {
      return response
        .json()
        .catch(function () {
          return {};
        })
        .then(function (answer) {
          if (!response.ok) {
            throw new Error(answer.error_description || "the server refused (" + response.status + ")");
          }
          return answer;
        });
    });
  }

  function show(element, message) {
    element.textContent = message;
    element.hidden = false;
  }

  function failed(element) {
    return function (error) {
      var message = error && error.name === "NotAllowedError"
        ? "The passkey request was cancelled or timed out."
        : (error && error.message) || String(error);
      show(element, message);
    };
  }

  function enroll() {
    var box = document.getElementById("enroll");
    var button = document.getElementById("enroll-passkey");
    if (!box || !button) {
      return;
    }
    var error = document.getElementById("enroll-error");
    button.addEventListener("click", function () {
      error.hidden = true;
      var invite = box.dataset.invite;
      var csrf = box.dataset.csrf;
      post("/enroll/begin", { invite: invite, csrf: csrf })
        .then(function (begun) {
          return navigator.credentials.create(creationOptions(begun.options)).then(function (credential) {
            return post("/enroll/finish", {
              ceremony: begun.ceremony,
              csrf: csrf,
              credential: registration(credential),
            });
          });
        })
        .then(function () {
          button.hidden = true;
          document.getElementById("enroll-done").hidden = false;
        })
        .catch(failed(error));
    });
  }

  function signIn() {
    var box = document.getElementById("passkey");
    var button = document.getElementById("passkey-sign-in");
    if (!box || !button) {
      return;
    }
    var error = document.getElementById("passkey-error");
    button.addEventListener("click", function () {
      error.hidden = true;
      var request = box.dataset.request;
      var csrf = box.dataset.csrf;
      post("/signin/passkey/begin", { request: request, csrf: csrf })
        .then(function (begun) {
          return navigator.credentials.get(requestOptions(begun.options)).then(function (credential) {
            return post("/signin/passkey/finish", {
              request: request,
              csrf: csrf,
              ceremony: begun.ceremony,
              credential: assertion(credential),
            });
          });
        })
        .then(function (done) {
          window.location.assign(done.redirect);
        })
        .catch(failed(error));
    });
  }

  enroll();
  signIn();
})();
