// The sign-in and enrollment pages' only script: WebAuthn ceremonies through
// navigator.credentials, talking JSON to this origin. No framework, no
// external code. (Passkey ceremonies land with the WebAuthn endpoints.)
"use strict";
